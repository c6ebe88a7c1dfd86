//! The outcome log: what became of each document and bill, as small events in the RabbitMQ
//! stream `{prefix}.events` (SPEC section 11), for `jst2kd trace` and `jst2kd reconcile`.
//!
//! Recording never blocks or fails the pipeline. [`OutcomeLog::record`] hands the event to a
//! bounded buffer and returns; a writer task publishes the buffer in batches, with confirms.
//! An event that finds the buffer full, or whose batch the broker does not confirm, is
//! counted in `jst2kd_events_dropped_total` and otherwise forgotten: the ledger is a record of
//! the pipeline, never a condition of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::messages::{self, Headers, header};
use crate::queue::{Broker, Destination, Outgoing, QueueError};
use crate::telemetry::Stage;

/// `jst2kd-schema` of a message of the outcome log: a JSON array of events.
pub const SCHEMA_OUTCOME: &str = "jst2kd.outcomes.v1";

/// Events waiting for the writer at most; beyond, they are dropped and counted.
const BUFFER: usize = 10_000;

/// Events published in one message at most (a few hundred kilobytes).
const BATCH: usize = 500;

/// How long a batch waits for more events before it is published. Fewer, larger messages
/// cost the broker less: the log took about a tenth of its CPU in the pipeline with batches
/// of what arrived during one confirm (`jst2kd bench`).
const LINGER: Duration = Duration::from_millis(100);

/// How long closing waits for the writer to publish what is buffered (out of the process's
/// `runtime.shutdown_timeout`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The producer read the document in a window (details: `window`, `status`, `page`).
    Fetched,
    /// The producer published it (confirmed).
    Published,
    /// The transformer skipped it (details: `reason`).
    Skipped,
    /// The transformer mapped it to bills (details: `bills`, their numbers).
    Mapped,
    /// A stage dead-lettered it (details: `kind`, `reason`).
    DeadLettered,
    /// A stage sent it to a retry tier (details: `tier`, `attempt`, `reason`).
    Retried,
    /// The loader found its bill in Kingdee (details: `result` created or duplicate, `id`).
    Booked,
    /// The loader submitted the bill.
    Submitted,
    /// The loader audited the bill.
    Audited,
    /// The bill number exists in Kingdee with other entries.
    Conflict,
}

impl OutcomeKind {
    /// The name in the log and in `trace`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Fetched => "fetched",
            OutcomeKind::Published => "published",
            OutcomeKind::Skipped => "skipped",
            OutcomeKind::Mapped => "mapped",
            OutcomeKind::DeadLettered => "dead_lettered",
            OutcomeKind::Retried => "retried",
            OutcomeKind::Booked => "booked",
            OutcomeKind::Submitted => "submitted",
            OutcomeKind::Audited => "audited",
            OutcomeKind::Conflict => "conflict",
        }
    }
}

/// One thing that became of a document or bill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// When (RFC 3339, UTC): when the message it is about was sent, or else when it happened.
    pub at: DateTime<Utc>,
    /// `producer`, `transformer` or `loader`.
    pub stage: String,
    /// What happened.
    pub event: OutcomeKind,
    /// The Jushuitan document, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_id: Option<i64>,
    /// The document's version (`modified`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    /// The bill, when the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bill_no: Option<String>,
    /// The message the event is about (a dead letter without a known document has only it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// What else there is to say: window, reason, tier, Kingdee id …
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl Outcome {
    /// An event of `stage`, now.
    pub fn new(stage: Stage, event: OutcomeKind) -> Self {
        Self {
            at: Utc::now(),
            stage: stage.as_str().to_string(),
            event,
            io_id: None,
            modified: None,
            bill_no: None,
            message_id: None,
            details: Map::new(),
        }
    }

    /// About document version `{io_id}@{modified}` (a count document's message id).
    pub fn of_version(mut self, message_id: &str) -> Self {
        if let Some((io_id, modified)) = message_id.split_once('@')
            && let Ok(io_id) = io_id.parse()
        {
            self.io_id = Some(io_id);
            self.modified = Some(modified.to_string());
        }
        self.message_id = Some(message_id.to_string());
        self
    }

    /// About document `io_id`.
    pub fn of_document(mut self, io_id: Option<i64>) -> Self {
        self.io_id = io_id.or(self.io_id);
        self
    }

    /// About bill `bill_no`.
    pub fn of_bill(mut self, bill_no: Option<&str>) -> Self {
        if let Some(bill_no) = bill_no {
            self.bill_no = Some(bill_no.to_string());
        }
        self
    }

    /// About message `message_id`; the document's version is read from a count document's id.
    pub fn of_message(self, message_id: &str) -> Self {
        if message_id.contains('@') {
            self.of_version(message_id)
        } else {
            let mut this = self;
            this.message_id = Some(message_id.to_string());
            this
        }
    }

    /// At `at` instead of now: an event recorded once the broker confirmed a message is
    /// dated when the message was sent, so that it sorts before what the next stage did with
    /// the message.
    pub fn sent_at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    /// With one more detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// The message that carries a batch of events into the stream: one JSON array, so that the
/// log costs the broker one message per batch rather than one per event.
pub fn batch_message(outcomes: &[Outcome]) -> Outgoing {
    let mut headers = Headers::new();
    headers.insert(header::SCHEMA.into(), SCHEMA_OUTCOME.into());
    Outgoing {
        destination: Destination::Events,
        message_id: messages::random_id(),
        headers,
        body: serde_json::to_vec(outcomes).unwrap_or_default(),
    }
}

/// The recording end of the outcome log, cheap to clone; detached (recording nothing) until
/// [`OutcomeLog::attach`] gives it a broker.
#[derive(Clone)]
pub struct OutcomeLog {
    inner: Arc<Inner>,
}

struct Inner {
    sender: Mutex<Option<mpsc::Sender<Outcome>>>,
    writer: Mutex<Option<(JoinHandle<()>, CancellationToken)>>,
    dropped: IntCounter,
}

impl OutcomeLog {
    /// A log that counts what it drops in `dropped` (`jst2kd_events_dropped_total`).
    pub fn new(dropped: IntCounter) -> Self {
        Self {
            inner: Arc::new(Inner {
                sender: Mutex::new(None),
                writer: Mutex::new(None),
                dropped,
            }),
        }
    }

    /// Starts writing to `broker`'s stream (once; later calls keep the first broker until
    /// [`OutcomeLog::close`]). On RabbitMQ the writer publishes through the stage's own
    /// connection: it has one batch unconfirmed at a time, far from the 256 unconfirmed stream
    /// messages past which RabbitMQ throttles a connection, and a connection of its own would
    /// cost each worker a thread and about 8 MiB (measured with `jst2kd bench`).
    pub fn attach(&self, broker: Broker) {
        let mut sender = lock(&self.inner.sender);
        if sender.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(BUFFER);
        *sender = Some(tx);
        let writer = tokio::spawn(write(rx, broker, self.inner.dropped.clone(), stop.clone()));
        *lock(&self.inner.writer) = Some((writer, stop));
    }

    /// Records `outcome` without waiting; dropped (and counted) when the buffer is full.
    pub fn record(&self, outcome: Outcome) {
        let sender = lock(&self.inner.sender);
        let Some(sender) = sender.as_ref() else {
            return;
        };
        if sender.try_send(outcome).is_err() {
            self.inner.dropped.inc();
        }
    }

    /// Stops recording and waits (a little) for the writer to publish what is buffered. What
    /// it cannot publish in time is dropped and counted.
    pub async fn close(&self) {
        lock(&self.inner.sender).take();
        let writer = lock(&self.inner.writer).take();
        let Some((mut writer, stop)) = writer else {
            return;
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_ok()
        {
            return;
        }
        warn!(
            "The outcome log could not publish its last events in time; they are dropped and counted."
        );
        // Stopped, the writer counts what it still holds and closes its connection.
        stop.cancel();
        if tokio::time::timeout(Duration::from_secs(1), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Publishes buffered events in batches until the log is closed (the buffer's senders are
/// gone) or `stop` fires.
async fn write(
    mut rx: mpsc::Receiver<Outcome>,
    broker: Broker,
    dropped: IntCounter,
    stop: CancellationToken,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // A batch fills for a moment before it goes: the broker then writes a few messages a
        // second per worker instead of one per confirm round trip. A closed log (shutdown)
        // goes at once.
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            let more = tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room));
            if !matches!(more.await, Ok(n) if n > 0) {
                break;
            }
        }
        let count = batch.len();
        let message = batch_message(&batch);
        batch.clear();
        let published = tokio::select! {
            () = stop.cancelled() => Err(QueueError::Cancelled),
            r = broker.publish(message) => r,
        };
        match published {
            Ok(()) => failing = false,
            Err(e) => {
                dropped.inc_by(count as u64);
                if stop.is_cancelled() {
                    break;
                }
                // Once per run of failures: the counter says how many.
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "Cannot record outcome events; they are dropped and counted in jst2kd_events_dropped_total.");
                }
            }
        }
    }
    // Stopped: what is still buffered is not recorded.
    rx.close();
    let mut left = 0;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    dropped.inc_by(left);
}

/// Reads the events of one message of the stream (a batch, or a single event); empty for
/// what holds no event (a read's end marker, anything foreign).
pub fn parse(body: &[u8]) -> Vec<Outcome> {
    if let Ok(batch) = serde_json::from_slice::<Vec<Outcome>>(body) {
        return batch;
    }
    serde_json::from_slice::<Outcome>(body)
        .map(|o| vec![o])
        .unwrap_or_default()
}

/// How long the stream may stay quiet before a read gives up on its end marker.
const QUIET_WAIT: Duration = Duration::from_secs(10);

/// `jst2kd-schema` of a read's end marker: not an event, and skipped by every reader.
pub const SCHEMA_MARKER: &str = "jst2kd.outcome.marker.v1";

/// The events recorded since `since` that `keep` accepts, in the order the stream holds
/// them, up to the moment of the call.
///
/// On RabbitMQ the read first appends an end marker to the stream and reads until it meets
/// it: the end of a stream that keeps growing is where the read began, whatever the workers'
/// clocks say. (The marker is no event; readers skip it.)
pub async fn read(
    broker: &Broker,
    since: DateTime<Utc>,
    keep: impl Fn(&Outcome) -> bool,
) -> Result<Vec<Outcome>, QueueError> {
    match broker {
        Broker::Memory(memory) => Ok(memory
            .events()
            .iter()
            .flat_map(|body| parse(body))
            .filter(|o| o.at >= since && keep(o))
            .collect()),
        Broker::Rabbit(_) if since > Utc::now() => Ok(Vec::new()),
        Broker::Rabbit(rabbit) => {
            let marker = messages::random_id();
            let mut headers = Headers::new();
            headers.insert(header::SCHEMA.into(), SCHEMA_MARKER.into());
            broker
                .publish(Outgoing {
                    destination: Destination::Events,
                    message_id: format!("marker-{marker}"),
                    headers,
                    body: serde_json::to_vec(&serde_json::json!({ "read_marker": marker }))
                        .unwrap_or_default(),
                })
                .await?;
            let mut reader = rabbit.read_events(since).await?;
            let mut kept = Vec::new();
            let result = loop {
                match reader.next(QUIET_WAIT).await {
                    Ok(Some(body)) => {
                        let events = parse(&body);
                        if events.is_empty() {
                            let this = serde_json::from_slice::<Value>(&body)
                                .ok()
                                .and_then(|v| v.get("read_marker").cloned());
                            if this.as_ref().and_then(Value::as_str) == Some(marker.as_str()) {
                                break Ok(());
                            }
                            continue;
                        }
                        // The stream starts at the segment holding `since`: earlier events too.
                        kept.extend(events.into_iter().filter(|o| o.at >= since && keep(o)));
                    }
                    Ok(None) => {
                        break Err(QueueError::Unavailable(format!(
                            "the outcome log {} went quiet for {} s before the end of the read",
                            rabbit.topology().events_stream(),
                            QUIET_WAIT.as_secs()
                        )));
                    }
                    Err(e) => break Err(e),
                }
            };
            reader.close().await;
            result.map(|()| kept)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_document_and_read_back() {
        let o = Outcome::new(Stage::Producer, OutcomeKind::Published)
            .of_version("123@2026-01-02 03:04:05")
            .with("status", "Confirmed");
        assert_eq!(o.io_id, Some(123));
        assert_eq!(o.modified.as_deref(), Some("2026-01-02 03:04:05"));
        let message = batch_message(std::slice::from_ref(&o));
        assert_eq!(message.destination, Destination::Events);
        assert_eq!(parse(&message.body), vec![o.clone()]);
        let single = serde_json::to_vec(&o).expect("json");
        assert_eq!(parse(&single), vec![o]);
        let bill = Outcome::new(Stage::Loader, OutcomeKind::Booked).of_message("JSTPD123");
        assert_eq!(bill.io_id, None);
        assert_eq!(bill.message_id.as_deref(), Some("JSTPD123"));
        assert!(parse(b"not json").is_empty());
        assert!(parse(br#"{"read_marker":"x"}"#).is_empty());
    }

    #[tokio::test]
    async fn a_detached_log_records_nothing_and_a_full_one_counts_what_it_drops() {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let log = OutcomeLog::new(dropped.clone());
        log.record(Outcome::new(Stage::Loader, OutcomeKind::Booked));
        assert_eq!(
            dropped.get(),
            0,
            "detached: nothing recorded, nothing dropped"
        );
        log.close().await;
    }
}
