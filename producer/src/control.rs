//! Backfills served by whoever holds the producer lock: one quota for every caller.
//!
//! `jst2kd backfill` puts a [`BackfillRequest`] on `{prefix}.control`. The lock holder (the
//! polling producer, or the backfill command itself when no producer runs) takes it between two
//! polls and fetches **one window** of it with its own client, so the window's calls go
//! through the same pacer and token as the polls. It then answers the requester with a
//! [`Progress`] and puts the request back at the tail of the queue with the window counted,
//! before acking the copy it took. So a request is never held while the holder polls, a
//! holder that dies loses at most the window in progress (the next holder fetches it again;
//! its documents reach the pipeline twice, which bill numbers make harmless), and several
//! requests take turns.
//!
//! The requester's reply queue is exclusive to its connection: once the requester is gone, the
//! holder's next reply comes back unroutable and the request is dropped. A backfill lives as
//! long as the command that asked for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use common::messages::{self, Headers, header};
use common::queue::rabbit::{ControlMessage, ControlServer, Replied};
use common::queue::{Delivery, QueueError};
use common::time::{format_beijing, parse_beijing};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{MAX_WINDOW, PageAt, PageSink, Producer, ProducerError, windows};

/// Documents sent in one reply, in bytes of JSON at most (one document larger goes alone).
const REPLY_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// How often an idle holder looks at the control queue.
pub const CONTROL_POLL: Duration = Duration::from_secs(1);

/// RabbitMQ's names of server-named queues: a requester's reply queue is one.
pub const REPLY_QUEUE_PREFIX: &str = "amq.gen-";

/// Requests this holder put back, by id, with the windows done in the copy it put back.
#[derive(Debug, Default)]
pub(crate) struct Served(Mutex<HashMap<String, usize>>);

/// Requests remembered at most; beyond, the memory starts again (it only saves windows).
const SERVED_CAPACITY: usize = 1_024;

impl Served {
    fn is_stale(&self, id: &str, done: usize) -> bool {
        self.lock().get(id).is_some_and(|newest| done < *newest)
    }

    fn put_back(&self, id: &str, done: usize) {
        let mut served = self.lock();
        if served.len() >= SERVED_CAPACITY && !served.contains_key(id) {
            served.clear();
        }
        served.insert(id.to_string(), done);
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A backfill asked of the lock holder, with its progress so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillRequest {
    /// Names the request in replies and logs.
    pub id: String,
    /// The requester's reply queue.
    pub reply_to: String,
    /// Start of the period (Beijing time).
    pub from: String,
    /// End of the period.
    pub to: String,
    /// Windows done.
    #[serde(default)]
    pub done: usize,
    /// Documents fetched so far.
    #[serde(default)]
    pub fetched: usize,
    /// Documents published so far (sent to the requester, with [`Deliver::Reply`]).
    #[serde(default)]
    pub published: usize,
    /// Where the documents go.
    #[serde(default)]
    pub deliver: Deliver,
}

/// Where the documents of a request go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliver {
    /// To the counts queue, for the pipeline (`backfill`), the statuses of
    /// `producer.statuses`.
    #[default]
    Publish,
    /// To the requester in [`Event::Documents`] replies, documents of every status
    /// (`reconcile`); nothing is published.
    Reply,
}

impl BackfillRequest {
    /// A new request for `[from, to]`, answered in `reply_to`.
    pub fn new(reply_to: &str, from: &DateTime<FixedOffset>, to: &DateTime<FixedOffset>) -> Self {
        Self {
            id: messages::random_id(),
            reply_to: reply_to.to_string(),
            from: format_beijing(from),
            to: format_beijing(to),
            done: 0,
            fetched: 0,
            published: 0,
            deliver: Deliver::Publish,
        }
    }

    /// The same, delivering the documents to the requester.
    pub fn replying(mut self) -> Self {
        self.deliver = Deliver::Reply;
        self
    }

    /// The message that carries it.
    pub fn message(&self) -> ControlMessage {
        let mut headers = Headers::new();
        headers.insert(header::SCHEMA.into(), messages::SCHEMA_BACKFILL.into());
        ControlMessage {
            message_id: format!("backfill-{}-{}", self.id, self.done),
            headers,
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// The period as times, when both are readable and in order.
    fn period(&self) -> Option<(DateTime<FixedOffset>, DateTime<FixedOffset>)> {
        let (from, to) = (parse_beijing(&self.from)?, parse_beijing(&self.to)?);
        (from < to).then_some((from, to))
    }
}

/// What a reply says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The holder took the request (again, with `restarted`, after a holder stopped in a
    /// window).
    Accepted,
    /// A window is done; more follow.
    Window,
    /// The last window is done.
    Finished,
    /// Documents of the window in progress (a [`Deliver::Reply`] request), in `documents`.
    Documents,
    /// The backfill stopped; `error` says why and `resume_from` where to start again.
    Failed,
}

/// A reply to the requester.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The request's id.
    pub id: String,
    /// What happened.
    pub event: Event,
    /// Who fetches it (`producer` or `backfill`, with the process id).
    pub by: String,
    /// The statuses the holder fetches (`producer.statuses`).
    #[serde(default)]
    pub statuses: Vec<String>,
    /// Windows in all.
    pub windows: usize,
    /// Windows done.
    pub done: usize,
    /// Documents fetched so far.
    pub fetched: usize,
    /// Documents published so far.
    pub published: usize,
    /// The window just done: begin, end, documents published.
    #[serde(default)]
    pub window: Option<(String, String, usize)>,
    /// A holder stopped in the middle of a window; it is fetched again.
    #[serde(default)]
    pub restarted: bool,
    /// Why the backfill stopped.
    #[serde(default)]
    pub error: Option<String>,
    /// Where a new backfill should start after a failure.
    #[serde(default)]
    pub resume_from: Option<String>,
    /// Where the holder delivers the documents: a requester that asked for
    /// [`Deliver::Reply`] and reads anything else here is served by an older holder, which
    /// would publish them; it stops at once.
    #[serde(default)]
    pub deliver: Option<Deliver>,
    /// The documents of an [`Event::Documents`] reply, exactly as Jushuitan returned them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<serde_json::Value>,
}

impl Producer {
    /// Serves the next waiting request for one window; `Ok(false)` when none waits. An error is
    /// the control channel's (the lock's connection): the request goes back to the queue.
    pub async fn serve_one(
        &self,
        server: &ControlServer,
        cancel: &CancellationToken,
        by: &str,
    ) -> Result<bool, QueueError> {
        let Some(delivery) = server.next().await? else {
            return Ok(false);
        };
        self.serve_step(server, delivery, cancel, by).await?;
        Ok(true)
    }

    /// Serves requests until `cancel`, looking at the queue every [`CONTROL_POLL`] when idle.
    pub async fn serve(&self, server: &ControlServer, cancel: &CancellationToken, by: &str) {
        while !cancel.is_cancelled() {
            let pause = match self.serve_one(server, cancel, by).await {
                Ok(true) => continue,
                Ok(false) => CONTROL_POLL,
                Err(e) => {
                    self.events.control_unavailable(&e);
                    crate::LOCK_RETRY
                }
            };
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn serve_step(
        &self,
        server: &ControlServer,
        delivery: Delivery,
        cancel: &CancellationToken,
        by: &str,
    ) -> Result<(), QueueError> {
        let request: BackfillRequest = match serde_json::from_slice(&delivery.body) {
            Ok(request) => request,
            Err(e) => {
                self.events.unreadable_request(&e.to_string());
                return delivery.ack().await;
            }
        };
        // Replies go only to a requester's exclusive, server-named queue: a request cannot
        // make the holder write into the work queues.
        if !request.reply_to.starts_with(REPLY_QUEUE_PREFIX) {
            self.events.unreadable_request(&format!(
                "reply_to {:?} is not a requester's queue ({REPLY_QUEUE_PREFIX}…)",
                request.reply_to
            ));
            return delivery.ack().await;
        }
        // A copy older than one this holder put back: a holder stopped between putting the
        // progress back and acking, and both copies came. Only the newer goes on.
        if self.control.is_stale(&request.id, request.done) {
            self.events.stale_request(&request.id, request.done);
            return delivery.ack().await;
        }
        let mut progress = Progress {
            id: request.id.clone(),
            event: Event::Accepted,
            by: by.to_string(),
            statuses: self.config.statuses.clone(),
            windows: 0,
            done: request.done,
            fetched: request.fetched,
            published: request.published,
            window: None,
            restarted: delivery.redelivered,
            error: None,
            resume_from: None,
            deliver: Some(request.deliver),
            documents: Vec::new(),
        };
        let Some((from, to)) = request.period() else {
            progress.event = Event::Failed;
            progress.error = Some(format!(
                "the period {:?} – {:?} is not two times in order",
                request.from, request.to
            ));
            reply(server, &request, &progress).await?;
            return delivery.ack().await;
        };
        let all = windows(from, to, MAX_WINDOW);
        progress.windows = all.len();
        let Some(&(begin, end)) = all.get(request.done) else {
            progress.event = Event::Finished;
            self.control.forget(&request.id);
            reply(server, &request, &progress).await?;
            return delivery.ack().await;
        };
        if (request.done == 0 || delivery.redelivered)
            && reply(server, &request, &progress).await? == Replied::Gone
        {
            self.events
                .requester_gone(&request.id, request.done, all.len());
            self.control.forget(&request.id);
            return delivery.ack().await;
        }
        let fetched = tokio::select! {
            // Stopping: the request goes back as it came, and the window is fetched again by
            // the next holder.
            () = cancel.cancelled() => return hand_back(server, delivery, &request).await,
            r = self.fetch(server, &request, &progress, (begin, end)) => r,
        };
        match fetched {
            Err(ProducerError::RequesterGone) => {
                self.events
                    .requester_gone(&request.id, request.done, all.len());
                self.control.forget(&request.id);
                delivery.ack().await
            }
            Err(ProducerError::Queue(e)) => {
                // The broker: the request waits for a holder that can publish.
                tokio::time::sleep(CONTROL_POLL).await;
                hand_back(server, delivery, &request).await?;
                Err(e)
            }
            Err(e) => {
                progress.event = Event::Failed;
                progress.error = Some(e.to_string());
                progress.resume_from = Some(format_beijing(&begin));
                self.events
                    .backfill_failed(&request.id, request.done, all.len(), &e);
                self.control.forget(&request.id);
                reply(server, &request, &progress).await?;
                delivery.ack().await
            }
            Ok((fetched, published)) => {
                let next = BackfillRequest {
                    done: request.done + 1,
                    fetched: request.fetched.saturating_add(fetched),
                    published: request.published.saturating_add(published),
                    ..request.clone()
                };
                progress.done = next.done;
                progress.fetched = next.fetched;
                progress.published = next.published;
                progress.window = Some((format_beijing(&begin), format_beijing(&end), published));
                progress.restarted = false;
                self.events
                    .backfill_window(&request.id, next.done, all.len(), published);
                if next.done == all.len() {
                    progress.event = Event::Finished;
                    self.control.forget(&request.id);
                    reply(server, &request, &progress).await?;
                    return delivery.ack().await;
                }
                progress.event = Event::Window;
                if reply(server, &request, &progress).await? == Replied::Gone {
                    self.events
                        .requester_gone(&request.id, next.done, all.len());
                    self.control.forget(&request.id);
                    return delivery.ack().await;
                }
                // The progress is in the queue before the copy it replaces is forgotten: a
                // crash between the two leaves both, and a window is fetched again, never
                // skipped; the holder that meets both goes on with the newer only.
                server.put_back(&next.message()).await?;
                self.control.put_back(&request.id, next.done);
                delivery.ack().await
            }
        }
    }
}

impl Producer {
    /// Fetches one window of `request`: published, or sent to its requester page by page.
    /// Returns (fetched, published or sent).
    async fn fetch(
        &self,
        server: &ControlServer,
        request: &BackfillRequest,
        progress: &Progress,
        (begin, end): (DateTime<FixedOffset>, DateTime<FixedOffset>),
    ) -> Result<(usize, usize), ProducerError> {
        match request.deliver {
            Deliver::Publish => self.publish_window(begin, end, false).await,
            Deliver::Reply => {
                let mut sink = Replying {
                    server,
                    request,
                    progress: Progress {
                        event: Event::Documents,
                        ..progress.clone()
                    },
                    sent: 0,
                };
                let fetched = self.scan_window(begin, end, &[None], &mut sink).await?;
                Ok((fetched, sink.sent))
            }
        }
    }
}

/// Sends each page's documents to the requester.
struct Replying<'a> {
    server: &'a ControlServer,
    request: &'a BackfillRequest,
    progress: Progress,
    sent: usize,
}

impl PageSink for Replying<'_> {
    async fn take(
        &mut self,
        docs: Vec<(String, Value)>,
        _: PageAt<'_>,
    ) -> Result<(), ProducerError> {
        // A few megabytes per reply, however large the documents: a message over the
        // broker's size limit would close the channel, and the step be tried again for ever.
        let mut chunk: Vec<Value> = Vec::new();
        let mut bytes = 0;
        let count = docs.len();
        for (i, (_, doc)) in docs.into_iter().enumerate() {
            bytes += doc.to_string().len();
            chunk.push(doc);
            if bytes < REPLY_CHUNK_BYTES && i + 1 < count {
                continue;
            }
            self.sent += chunk.len();
            self.progress.documents = std::mem::take(&mut chunk);
            bytes = 0;
            let replied = reply(self.server, self.request, &self.progress).await?;
            self.progress.documents.clear();
            if replied == Replied::Gone {
                return Err(ProducerError::RequesterGone);
            }
        }
        Ok(())
    }
}

/// Gives a request back unchanged as a fresh copy, so that stopping and broker trouble do not
/// count toward the control queue's delivery limit; requeued when even that fails.
async fn hand_back(
    server: &ControlServer,
    delivery: Delivery,
    request: &BackfillRequest,
) -> Result<(), QueueError> {
    match server.put_back(&request.message()).await {
        Ok(()) => delivery.ack().await,
        Err(e) => {
            delivery.requeue().await.ok();
            Err(e)
        }
    }
}

async fn reply(
    server: &ControlServer,
    request: &BackfillRequest,
    progress: &Progress,
) -> Result<Replied, QueueError> {
    let body = serde_json::to_vec(progress).unwrap_or_default();
    server.reply(&request.reply_to, &request.id, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_copy_of_a_request_goes_on() {
        let served = Served::default();
        assert!(!served.is_stale("a", 0), "unknown: goes on");
        served.put_back("a", 3);
        assert!(served.is_stale("a", 2), "older than the copy put back");
        assert!(!served.is_stale("a", 3));
        assert!(!served.is_stale("b", 0));
        served.forget("a");
        assert!(!served.is_stale("a", 2));
    }

    #[test]
    fn requests_read_back_and_tolerate_missing_progress() {
        let t = |s: &str| parse_beijing(s).expect("time");
        let request = BackfillRequest::new(
            "amq.gen-1",
            &t("2026-01-01 00:00:00"),
            &t("2026-01-15 00:00:00"),
        );
        let message = request.message();
        let back: BackfillRequest = serde_json::from_slice(&message.body).expect("json");
        assert_eq!(back, request);
        assert_eq!(
            back.period(),
            Some((t("2026-01-01 00:00:00"), t("2026-01-15 00:00:00")))
        );
        assert_eq!(
            message.headers[header::SCHEMA],
            messages::SCHEMA_BACKFILL,
            "{message:?}"
        );
        let bare: BackfillRequest = serde_json::from_str(
            r#"{"id":"x","reply_to":"q","from":"2026-01-02 00:00:00","to":"2026-01-01 00:00:00"}"#,
        )
        .expect("json");
        assert_eq!(bare.done, 0);
        assert_eq!(bare.period(), None, "a period out of order is refused");
    }
}
