//! The producer stage: polls JST for count documents modified since the checkpoint, publishes
//! one message per document with confirms, then advances the checkpoint.
//!
//! Invariant: the checkpoint moves past a window only after every document of that window was
//! confirmed by the broker. A crash at any point re-sends (from `checkpoint − overlap`), never
//! skips; downstream, bill numbers make the re-sent documents harmless.

pub mod checkpoint;
mod config;
pub mod control;
pub mod events;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use common::config::{ConfigError, Secret};
use common::messages::{self, Headers, header};
use common::queue::rabbit::{ControlServer, LockError, ProducerLock};
use common::queue::{Broker, Destination, Outgoing, QueueError, Role, Topology, Work};
use common::telemetry::{Health, Metrics};
use common::time::{format_beijing, now_beijing};
use common::worker::{self, Context, WorkerError};
use jst::{CountQuery, JstClient, JstError, Paging};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use events::ProducerEvents;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use config::{Config, ProducerConfig, StartAt};

/// Longest window asked of the count query: one second short of seven days. The service
/// takes `modified_begin` and `modified_end` "at most 7 days apart" and does not say whether
/// exactly seven days passes, so no window is left to that boundary. Consecutive windows
/// share their boundary second; a document modified in it comes twice and is recognised by
/// its version.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400 - 1);

/// Why a poll failed (the next poll starts again from the checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// The JST call failed.
    #[error(transparent)]
    Jst(#[from] JstError),
    /// Publishing failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The checkpoint cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A window could not be read whole (it kept changing); the next poll tries again.
    #[error("{0}")]
    Unsettled(String),
    /// The requester of the documents went away (a control request's reply came back).
    #[error("the requester went away")]
    RequesterGone,
}

/// Where a page of documents came from.
pub struct PageAt<'a> {
    /// The window.
    pub window: (&'a DateTime<FixedOffset>, &'a DateTime<FixedOffset>),
    /// The status asked (`any`).
    pub status: &'a str,
    /// The page (1-based).
    pub page: u32,
}

/// Where [`Producer::scan_window`] hands each page's new documents (message id, document).
pub trait PageSink {
    /// Takes one page's documents; an error ends the scan.
    fn take(
        &mut self,
        docs: Vec<(String, Value)>,
        at: PageAt<'_>,
    ) -> impl std::future::Future<Output = Result<(), ProducerError>> + Send;

    /// Finishes what the pages taken so far started; the scan returns only after it.
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), ProducerError>> + Send {
        async { Ok(()) }
    }
}

/// Pages a scan has published and not yet seen confirmed: the next page is fetched while the
/// broker confirms the ones before it (awaiting each page's confirms before fetching the
/// next held a poll to one page per round trip). The checkpoint still moves only after every
/// confirm of its window ([`PageSink::flush`]).
pub const PAGES_IN_FLIGHT: usize = 4;

/// A page published, once confirmed.
struct Sent {
    ids: Vec<String>,
    at: chrono::DateTime<chrono::Utc>,
}

/// Publishes pages to the counts queue, skipping versions published lately when asked.
struct Publishing<'a> {
    producer: &'a Producer,
    skip_recent: bool,
    published: usize,
    in_flight: VecDeque<tokio::task::JoinHandle<Result<Sent, QueueError>>>,
}

impl<'a> Publishing<'a> {
    fn new(producer: &'a Producer, skip_recent: bool) -> Self {
        Self {
            producer,
            skip_recent,
            published: 0,
            in_flight: VecDeque::with_capacity(PAGES_IN_FLIGHT + 1),
        }
    }

    /// Waits for the oldest page's confirms, then counts it published.
    async fn settle_oldest(&mut self) -> Result<(), ProducerError> {
        // Awaited in place, taken out once done: a scan dropped during the wait (shutdown,
        // the lock lost) still aborts it.
        let Some(page) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let done = page.await;
        self.in_flight.pop_front();
        match done {
            Ok(Ok(sent)) => {
                self.producer.sent(sent);
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ProducerError::Queue(QueueError::Unavailable(format!(
                "the publishing task failed: {e}"
            )))),
        }
    }
}

impl Drop for Publishing<'_> {
    /// A scan that ended early (an error, shutdown) leaves its pages unconfirmed: the
    /// checkpoint did not pass them, and whatever was published is sent again.
    fn drop(&mut self) {
        for page in &self.in_flight {
            page.abort();
        }
    }
}

impl PageSink for Publishing<'_> {
    async fn take(
        &mut self,
        new: Vec<(String, Value)>,
        at: PageAt<'_>,
    ) -> Result<(), ProducerError> {
        self.producer.events.fetched(
            new.iter().map(|(id, _)| id.as_str()),
            at.window,
            at.status,
            at.page,
        );
        let new_count = new.len();
        let docs: Vec<(String, Value)> = {
            let recent = self
                .producer
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            new.into_iter()
                .filter(|(id, _)| !(self.skip_recent && recent.contains(id)))
                .collect()
        };
        self.producer
            .events
            .already_published(new_count - docs.len());
        self.published += docs.len();
        if docs.is_empty() {
            return Ok(());
        }
        let (messages, sent, spans) = Producer::messages(docs);
        let broker = self.producer.broker.clone();
        self.in_flight.push_back(tokio::spawn(async move {
            let published = broker.publish_all(messages).await;
            // Each document's publish span ends with its confirm (or the failure).
            if let Err(e) = &published {
                for span in &spans {
                    common::traces::failed(span, &e.to_string());
                }
            }
            drop(spans);
            published.map(|()| sent)
        }));
        while self.in_flight.len() > PAGES_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ProducerError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// Splits `[from, to]` into consecutive windows of at most `max`.
pub fn windows(
    from: DateTime<FixedOffset>,
    to: DateTime<FixedOffset>,
    max: Duration,
) -> Vec<(DateTime<FixedOffset>, DateTime<FixedOffset>)> {
    let step = chrono::Duration::from_std(max).unwrap_or(chrono::Duration::days(7));
    let mut out = Vec::new();
    let mut begin = from;
    while begin < to {
        let end = (begin + step).min(to);
        out.push((begin, end));
        begin = end;
    }
    out
}

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PollReport {
    /// Windows queried.
    pub windows: usize,
    /// Documents fetched.
    pub fetched: usize,
    /// Documents published (fetched less those already published with the same version).
    pub published: usize,
    /// The checkpoint now.
    pub until: Option<DateTime<FixedOffset>>,
}

/// The `io_id@modified` of documents published lately, bounded, oldest forgotten first: the
/// overlap of consecutive polls re-reads documents, and they need not flood the queue again.
/// After a restart the set is empty and the overlap is re-sent, which downstream tolerates.
///
/// Kept as 128-bit digests, not strings: 16 bytes an entry (about 4 MiB when full, against
/// about 14 MiB for the ids themselves), so the producer's memory does not grow with the
/// documents it has seen. Two versions that shared a digest would make the second look
/// published; at 128 bits and [`RECENT_CAPACITY`] entries the odds are about 10⁻²⁹.
#[derive(Debug)]
struct Recent {
    seen: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

/// A 128-bit digest of a message id: two SipHash values of it, told apart by a prefix.
fn digest(id: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

impl Recent {
    fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.seen.contains(&digest(id))
    }

    fn insert(&mut self, id: &str) {
        let key = digest(id);
        if self.seen.insert(key) {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }
}

/// How many published document versions the producer remembers.
pub const RECENT_CAPACITY: usize = 100_000;

/// Polls one JST account into one broker.
pub struct Producer {
    client: JstClient,
    broker: Broker,
    config: ProducerConfig,
    events: ProducerEvents,
    started: DateTime<FixedOffset>,
    recent: Mutex<Recent>,
    control: control::Served,
}

/// The message id of a document version: `{io_id}@{modified}`, kept within AMQP's 255 bytes
/// (a `modified` that long is no date JST writes, but it must not stop the producer): a longer
/// one is cut and given a stable hash of the whole.
fn message_id(doc: &Value) -> String {
    let id = jst::document_version(doc);
    if id.len() <= 255 {
        return id;
    }
    // FNV-1a: stable across builds and restarts, so the overlap still recognises the version.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut end = 200;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}#{hash:016x}", &id[..end])
}

impl Producer {
    /// A producer; `start_at` durations count back from now.
    pub fn new(
        client: JstClient,
        broker: Broker,
        config: ProducerConfig,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            broker,
            config,
            events: ProducerEvents::new(&metrics),
            started: now_beijing(),
            recent: Mutex::new(Recent::new(RECENT_CAPACITY)),
            control: control::Served::default(),
        }
    }

    fn first_start(&self) -> DateTime<FixedOffset> {
        match &self.config.start_at {
            StartAt::At(t) => *t,
            StartAt::Ago(d) => {
                self.started - chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::days(1))
            }
        }
    }

    /// One poll: from `checkpoint − overlap` (or `start_at`) to `now − lag`, window by window;
    /// the checkpoint advances after each window whose documents were all confirmed.
    pub async fn poll_once(&self) -> Result<PollReport, ProducerError> {
        let path = &self.config.checkpoint;
        let from = match checkpoint::load(path)? {
            Some(cp) => {
                self.events.checkpoint_read(&cp.until);
                cp.until - chrono::Duration::from_std(self.config.overlap.0).unwrap_or_default()
            }
            None => self.first_start(),
        };
        let to = now_beijing() - chrono::Duration::from_std(self.config.lag.0).unwrap_or_default();
        let mut report = PollReport::default();
        for (begin, end) in windows(from, to, MAX_WINDOW) {
            let (fetched, published) = self.publish_window(begin, end, true).await?;
            checkpoint::save(path, &Checkpoint { until: end })?;
            self.events.window_done(&begin, &end, fetched, published);
            report.windows += 1;
            report.fetched += fetched;
            report.published += published;
            report.until = Some(end);
        }
        Ok(report)
    }

    /// Publishes every document of one window, each status of `producer.statuses` in turn, and
    /// waits for every confirm. With `skip_recent`, versions published lately are skipped.
    /// Returns (fetched, published).
    pub async fn publish_window(
        &self,
        begin: DateTime<FixedOffset>,
        end: DateTime<FixedOffset>,
        skip_recent: bool,
    ) -> Result<(usize, usize), ProducerError> {
        let statuses: Vec<Option<String>> =
            self.config.statuses.iter().cloned().map(Some).collect();
        let mut sink = Publishing::new(self, skip_recent);
        let fetched = self.scan_window(begin, end, &statuses, &mut sink).await?;
        Ok((fetched, sink.published))
    }

    /// Reads every document of one window, for each of `statuses` in turn (`None`: every
    /// status), page by page, and hands each page's documents not seen before in this window
    /// to `sink` (with their message ids). Returns how many documents it handed over.
    ///
    /// Page by page, memory stays bounded by one page, whatever the window holds. Paging is by
    /// offset: a document that leaves the result set (or moves in it, being modified) while we
    /// page shifts the rest, and one can slip between two pages. So a window is scanned again,
    /// handing over only what the earlier passes did not see, until a pass finds the result
    /// set stable; a window that never settles is an error.
    pub async fn scan_window(
        &self,
        begin: DateTime<FixedOffset>,
        end: DateTime<FixedOffset>,
        statuses: &[Option<String>],
        sink: &mut impl PageSink,
    ) -> Result<usize, ProducerError> {
        let mut fetched = 0;
        for status in statuses {
            let query = CountQuery {
                modified_begin: format_beijing(&begin),
                modified_end: format_beijing(&end),
                status: status.clone(),
            };
            let label = status.as_deref().unwrap_or("any");
            let mut seen: HashSet<String> = HashSet::new();
            for pass in 1..=MAX_PASSES {
                let (mut first_count, mut shifted) = (None, false);
                let mut pass_ids: HashSet<String> = HashSet::new();
                let mut paging = Paging::new(self.client.page_size());
                loop {
                    let page_no = paging.page_index();
                    let page = self.client.count_page_retrying(&query, page_no).await?;
                    let page_ids: Vec<String> = page.datas.iter().map(message_id).collect();
                    // Judged before anything of the page is handed over: an answer that does
                    // not add up fails the window, and a poll's checkpoint stays.
                    let last = paging.judge(&page, &page_ids)?;
                    match (first_count, page.data_count) {
                        (None, count) => first_count = Some(count),
                        (Some(first), count) => shifted |= first != count,
                    }
                    let new: Vec<(String, Value)> = page_ids
                        .into_iter()
                        .zip(page.datas)
                        .filter(|(id, _)| pass_ids.insert(id.clone()) && seen.insert(id.clone()))
                        .collect();
                    fetched += new.len();
                    let at = PageAt {
                        window: (&begin, &end),
                        status: label,
                        page: page_no,
                    };
                    sink.take(new, at).await?;
                    if last {
                        break;
                    }
                }
                let expected = first_count.flatten().and_then(|c| usize::try_from(c).ok());
                let stable = !shifted && expected.is_none_or(|c| pass_ids.len() >= c);
                if stable {
                    break;
                }
                if pass == MAX_PASSES {
                    // Not provably read whole: a poll's checkpoint must not pass it. The next
                    // poll starts from the checkpoint and scans it again.
                    return Err(ProducerError::Unsettled(format!(
                        "the window {} – {} ({label}) kept changing while it was paged {MAX_PASSES} times",
                        query.modified_begin, query.modified_end
                    )));
                } else {
                    debug!(
                        status = label,
                        pass, "The window changed while it was paged; scanning it again."
                    );
                }
            }
        }
        // Handed over is not done: the caller moves its checkpoint once this returns.
        sink.flush().await?;
        Ok(fetched)
    }

    /// The messages of documents exactly as JST returned them, and what to record once they
    /// are confirmed. Each document starts its trace here: its `traceparent` names its publish
    /// span (returned, to end once the page is confirmed) when traces are exported, and is a
    /// random root otherwise.
    fn messages(docs: Vec<(String, Value)>) -> (Vec<Outgoing>, Sent, Vec<tracing::Span>) {
        let at = chrono::Utc::now();
        let published_at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let ids: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
        let mut spans = Vec::new();
        let messages: Vec<Outgoing> = docs
            .into_iter()
            .map(|(message_id, doc)| {
                // An unreadable document is still published: the transformer dead-letters it
                // as malformed, so it is kept and visible rather than dropped here.
                let mut headers = Headers::new();
                headers.insert(header::SCHEMA.into(), messages::SCHEMA_COUNT.into());
                let traceparent = if common::traces::enabled() {
                    let io_id = messages::int_field(doc.get("io_id")).unwrap_or_default();
                    let span = tracing::info_span!(parent: None, "publish", io_id, message_id = %message_id);
                    let traceparent = common::traces::traceparent(&span);
                    spans.push(span);
                    traceparent
                } else {
                    None
                };
                headers.insert(
                    header::TRACEPARENT.into(),
                    traceparent
                        .unwrap_or_else(messages::new_traceparent)
                        .into(),
                );
                headers.insert(header::PUBLISHED_AT.into(), published_at.clone().into());
                Outgoing {
                    destination: Destination::Work(Work::Counts),
                    message_id,
                    headers,
                    body: serde_json::to_vec(&doc).unwrap_or_default(),
                }
            })
            .collect();
        (messages, Sent { ids, at }, spans)
    }

    /// Records a confirmed page: its events, and its versions as published lately.
    fn sent(&self, sent: Sent) {
        self.events.published(&sent.ids, sent.at);
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &sent.ids {
            recent.insert(id);
        }
    }

    /// Polls every `poll_interval` until `cancel`. A failed poll is retried at the next
    /// interval, from the checkpoint; a configuration failure (bad signature, IP whitelist,
    /// permission, token) marks the process not ready and retries slowly instead of exiting.
    ///
    /// With `control` (the lock holder's side of the control queue), the time between two
    /// polls serves backfill requests, one window at a time, through this producer's client:
    /// one pacer and one token for polls and backfills. A window started before the next poll
    /// is due is finished first, so a poll can be late by one window; at least one window is
    /// served between two polls, so a backfill advances even when windows outlast the
    /// interval.
    pub async fn run(
        &self,
        cancel: &CancellationToken,
        health: &Health,
        control: Option<&ControlServer>,
    ) -> Result<(), ProducerError> {
        info!(statuses = ?self.config.statuses, poll_interval_s = self.config.poll_interval.0.as_secs(), "Producer polling.");
        let by = format!("producer (pid {})", std::process::id());
        loop {
            let poll = self.poll_once();
            tokio::pin!(poll);
            let result = tokio::select! {
                // A poll cut short leaves the checkpoint at its last confirmed window.
                () = cancel.cancelled() => break,
                r = &mut poll => r,
            };
            let mut pause = self.config.poll_interval.0;
            match result {
                Ok(report) => {
                    health.set("jst", true);
                    if report.published > 0 {
                        info!(published = report.published, fetched = report.fetched, windows = report.windows, until = %report.until.map(|u| format_beijing(&u)).unwrap_or_default(), "Poll published documents.");
                    } else {
                        debug!(fetched = report.fetched, "Poll found nothing new.");
                    }
                }
                Err(ProducerError::Checkpoint(e)) => {
                    error!(error = %e, "Checkpoint problem; the producer cannot continue safely.");
                    return Err(ProducerError::Checkpoint(e));
                }
                Err(ProducerError::Jst(e)) if e.is_configuration() => {
                    health.set("jst", false);
                    pause = pause.max(CONFIGURATION_RETRY);
                    error!(error = %e, retry_in_s = pause.as_secs(), "Jushuitan refused the app: check jst.app_key / jst.app_secret (code 10), the app's IP whitelist (code 110), its API permissions (code 190) or the tokens (code 100). Not ready until a poll succeeds.");
                }
                Err(ProducerError::Jst(e)) if e.is_protocol() => {
                    health.set("jst", false);
                    pause = pause.max(CONFIGURATION_RETRY);
                    error!(error = %e, retry_in_s = pause.as_secs(), "Jushuitan's answer cannot be trusted; the checkpoint stays where it was. Not ready until a poll succeeds.");
                }
                Err(e) => {
                    warn!(error = %e, "Poll failed; the next poll resumes from the checkpoint.")
                }
            }
            if !self.between_polls(pause, cancel, control, &by).await {
                break;
            }
        }
        info!("Producer stopped polling.");
        Ok(())
    }

    /// Waits `pause`, serving backfill requests meanwhile when `control` is given; false once
    /// `cancel` fired.
    async fn between_polls(
        &self,
        pause: Duration,
        cancel: &CancellationToken,
        control: Option<&ControlServer>,
        by: &str,
    ) -> bool {
        let due = tokio::time::Instant::now() + pause;
        let mut served = false;
        loop {
            if cancel.is_cancelled() {
                return false;
            }
            let mut nap = due.saturating_duration_since(tokio::time::Instant::now());
            if let Some(control) = control {
                if nap > Duration::ZERO || !served {
                    match self.serve_one(control, cancel, by).await {
                        Ok(true) => {
                            served = true;
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => self.events.control_unavailable(&e),
                    }
                }
                nap = due
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(control::CONTROL_POLL);
            }
            if nap == Duration::ZERO {
                return !cancel.is_cancelled();
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

/// Pause between two attempts to take the lock.
pub const LOCK_RETRY: Duration = Duration::from_secs(3);

/// How a producer makes sure that no other one polls the same account at the same time.
#[derive(Debug)]
pub enum Exclusion {
    /// The exclusive queue `{prefix}.producer.lock`, declared on a connection of its own
    /// without automatic recovery (SPEC section 3): a second producer waits, not ready, and
    /// takes over when the first is gone; one that loses the lock stops polling first.
    BrokerLock {
        /// `amqp.url`.
        url: Secret,
        /// The lock queue's name.
        queue: String,
        /// The lock connection's name, as RabbitMQ shows it.
        connection_name: String,
    },
    /// The only producer there is: the demo and in-process tests.
    Alone,
}

/// The Jushuitan client of a producer process (and of `backfill`, which shares its token):
/// `[jst]`, with the token pair kept beside the checkpoint.
pub fn client(config: &Config, metrics: Arc<Metrics>) -> Result<JstClient, WorkerError> {
    JstClient::new(&config.jst, Some(metrics))
        .and_then(|c| c.with_token_file(jst::token_file_for(&config.producer.checkpoint)))
        .map_err(|e| WorkerError::Config(ConfigError(e.to_string())))
}

/// The producer process: the client, RabbitMQ, the broker lock, the stage, the connection
/// closed.
pub async fn start(config: Config, ctx: Context) -> Result<(), WorkerError> {
    let client = client(&config, ctx.metrics.clone())?;
    let broker =
        worker::connect_rabbit(&config.amqp, "jst2kd-producer", Role::Producer, &ctx).await?;
    let exclusion = Exclusion::BrokerLock {
        url: config.amqp.url.clone(),
        queue: Topology::from_config(&config.amqp).lock_queue(),
        connection_name: format!("jst2kd-producer-lock-{}", std::process::id()),
    };
    let result = run(
        &config.producer,
        broker.clone(),
        client,
        exclusion,
        ctx.clone(),
    )
    .await;
    worker::close(&broker, &ctx).await;
    result
}

/// Polls every `producer.poll_interval` while it holds `exclusion`, until `ctx.cancel`.
pub async fn run(
    config: &ProducerConfig,
    broker: Broker,
    client: JstClient,
    exclusion: Exclusion,
    ctx: Context,
) -> Result<(), WorkerError> {
    let producer = Producer::new(client, broker.clone(), config.clone(), ctx.metrics.clone());
    let polled = match exclusion {
        Exclusion::Alone => producer.run(&ctx.cancel, &ctx.health, None).await,
        Exclusion::BrokerLock {
            url,
            queue,
            connection_name,
        } => run_locked(&producer, &url, &queue, &connection_name, &ctx).await,
    };
    if let Some(fatal) = broker.fatal() {
        return Err(WorkerError::Queue(fatal));
    }
    polled.map_err(|e| WorkerError::Runtime(e.to_string()))
}

/// Takes the broker lock, polls while holding it, and takes it again when its connection
/// drops; waits (not ready) while another producer holds it.
async fn run_locked(
    producer: &Producer,
    url: &Secret,
    queue: &str,
    connection_name: &str,
    ctx: &Context,
) -> Result<(), ProducerError> {
    let mut waiting_logged = false;
    // Not ready until the lock is held.
    ctx.health.set("lock", false);
    loop {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        match ProducerLock::acquire(url, connection_name, producer.broker.topology()).await {
            Ok(lock) => {
                let control = match lock
                    .control(producer.broker.topology().control_queue())
                    .await
                {
                    Ok(control) => control,
                    Err(e) => {
                        // Holding the lock without reading the control queue would leave
                        // backfill requests unanswered: give it up and try again.
                        producer.events.control_unavailable(&e);
                        lock.release().await;
                        tokio::select! {
                            () = ctx.cancel.cancelled() => return Ok(()),
                            () = tokio::time::sleep(LOCK_RETRY) => {}
                        }
                        continue;
                    }
                };
                info!(lock = %queue, "Holding the producer lock; polling, and serving backfill requests between polls.");
                waiting_logged = false;
                ctx.health.set("lock", true);
                let outcome = tokio::select! {
                    r = producer.run(&ctx.cancel, &ctx.health, Some(&control)) => Some(r),
                    () = lock.lost() => None,
                };
                ctx.health.set("lock", false);
                match outcome {
                    Some(r) => {
                        lock.release().await;
                        return r;
                    }
                    None => warn!(
                        "The producer lock's connection dropped; polling stopped. Trying to take the lock again."
                    ),
                }
            }
            Err(LockError::Held) => {
                if !waiting_logged {
                    info!(lock = %queue, "Another producer holds the lock; waiting (not ready).");
                    waiting_logged = true;
                }
            }
            Err(LockError::Unavailable(e)) => {
                warn!(error = %e, "Cannot reach RabbitMQ for the producer lock; retrying.");
            }
        }
        tokio::select! {
            () = ctx.cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(LOCK_RETRY) => {}
        }
    }
}

/// Scans of one window at most, when it changes while being paged.
pub const MAX_PASSES: usize = 3;

/// Least pause after a configuration failure, so a misconfigured producer does not hammer JST.
pub const CONFIGURATION_RETRY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_set_is_bounded_and_forgets_the_oldest_first() {
        let mut recent = Recent::new(3);
        for id in ["1@a", "2@a", "3@a", "2@a"] {
            recent.insert(id);
        }
        assert!(["1@a", "2@a", "3@a"].iter().all(|id| recent.contains(id)));
        assert!(!recent.contains("1@b"), "another version is not the same");
        recent.insert("4@a");
        assert!(!recent.contains("1@a"), "the oldest went first");
        assert!(["2@a", "3@a", "4@a"].iter().all(|id| recent.contains(id)));
        assert_eq!((recent.seen.len(), recent.order.len()), (3, 3));
    }

    #[test]
    fn message_ids_fit_an_amqp_short_string() {
        let doc = serde_json::json!({"io_id": 7, "modified": "2026-11-01 10:00:00"});
        assert_eq!(message_id(&doc), "7@2026-11-01 10:00:00");
        let long = serde_json::json!({"io_id": 7, "modified": "改".repeat(200)});
        let id = message_id(&long);
        assert!(id.len() <= 255 && id.starts_with("7@"), "{id}");
        assert_eq!(id, message_id(&long), "stable");
        let other = serde_json::json!({"io_id": 7, "modified": format!("{}x", "改".repeat(200))});
        assert_ne!(id, message_id(&other));
    }

    #[test]
    fn periods_split_into_windows_of_at_most_seven_days() {
        let t = |s: &str| common::time::parse_beijing(s).expect("time");
        let w = windows(
            t("2026-01-01 00:00:00"),
            t("2026-01-20 12:00:00"),
            MAX_WINDOW,
        );
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], (t("2026-01-01 00:00:00"), t("2026-01-07 23:59:59")));
        assert_eq!(w[1], (t("2026-01-07 23:59:59"), t("2026-01-14 23:59:58")));
        assert_eq!(w[2], (t("2026-01-14 23:59:58"), t("2026-01-20 12:00:00")));
        // Exactly 14 days: three windows, none of a full seven days.
        let w = windows(
            t("2026-01-01 00:00:00"),
            t("2026-01-15 00:00:00"),
            MAX_WINDOW,
        );
        assert_eq!(w.len(), 3);
        assert!(w.iter().all(|(b, e)| *e - *b < chrono::Duration::days(7)));
        assert_eq!(w[2].1, t("2026-01-15 00:00:00"));
        assert!(
            windows(
                t("2026-01-02 00:00:00"),
                t("2026-01-01 00:00:00"),
                MAX_WINDOW
            )
            .is_empty()
        );
    }
}
