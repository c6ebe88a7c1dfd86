//! The producer stage: polls JST for count documents modified since the checkpoint, publishes
//! one message per document with confirms, then advances the checkpoint.
//!
//! Invariant: the checkpoint moves past a window only after every document of that window was
//! confirmed by the broker. A crash at any point re-sends (from `checkpoint − overlap`), never
//! skips; downstream, bill numbers make the re-sent documents harmless.

pub mod checkpoint;

use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use common::config::{ProducerConfig, StartAt};
use common::messages::{self, Headers, header, int_field, text_field};
use common::queue::{Broker, Destination, Outgoing, QueueError, Work};
use common::telemetry::{Metrics, Stage};
use common::time::{format_beijing, now_beijing, rfc3339_now};
use common::worker::Context;
use jst::{CountQuery, JstClient, JstError};
use serde_json::Value;
use tracing::{debug, error, info, warn};

pub use checkpoint::{Checkpoint, CheckpointError};

/// Longest window the count query accepts.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

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
    /// Documents fetched and published.
    pub published: usize,
    /// The checkpoint now.
    pub until: Option<DateTime<FixedOffset>>,
}

/// Polls one JST account into one broker.
pub struct Producer {
    client: JstClient,
    broker: Broker,
    config: ProducerConfig,
    metrics: std::sync::Arc<Metrics>,
    started: DateTime<FixedOffset>,
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
            metrics,
            started: now_beijing(),
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

    /// One poll: from `checkpoint − overlap` (or `start_at`) to `now − lag`, window by window,
    /// each status of `producer.statuses` in turn; the checkpoint advances after each window.
    pub async fn poll_once(&self) -> Result<PollReport, ProducerError> {
        let path = &self.config.checkpoint;
        let from = match checkpoint::load(path)? {
            Some(cp) => {
                self.metrics
                    .checkpoint_timestamp
                    .set(cp.until.timestamp() as f64);
                cp.until - chrono::Duration::from_std(self.config.overlap.0).unwrap_or_default()
            }
            None => self.first_start(),
        };
        let to = now_beijing() - chrono::Duration::from_std(self.config.lag.0).unwrap_or_default();
        let mut report = PollReport::default();
        for (begin, end) in windows(from, to, MAX_WINDOW) {
            let mut published = 0;
            for status in &self.config.statuses {
                let query = CountQuery {
                    modified_begin: format_beijing(&begin),
                    modified_end: format_beijing(&end),
                    status: Some(status.clone()),
                };
                let docs = self.client.count_window(&query).await?;
                published += docs.len();
                self.publish(docs).await?;
            }
            checkpoint::save(path, &Checkpoint { until: end })?;
            self.metrics
                .checkpoint_timestamp
                .set(end.timestamp() as f64);
            debug!(from = %format_beijing(&begin), to = %format_beijing(&end), published, "Window published; checkpoint advanced.");
            report.windows += 1;
            report.published += published;
            report.until = Some(end);
        }
        Ok(report)
    }

    /// Publishes documents exactly as JST returned them, and waits for every confirm.
    async fn publish(&self, docs: Vec<Value>) -> Result<(), ProducerError> {
        if docs.is_empty() {
            return Ok(());
        }
        let published_at = rfc3339_now();
        let count = docs.len() as u64;
        let messages: Vec<Outgoing> = docs
            .into_iter()
            .map(|doc| {
                // An unreadable document is still published: the transformer dead-letters it
                // as malformed, so it is kept and visible rather than dropped here.
                let message_id = format!(
                    "{}@{}",
                    int_field(doc.get("io_id"))
                        .map_or_else(|| "unknown".to_string(), |i| i.to_string()),
                    text_field(doc.get("modified")).unwrap_or_default()
                );
                let mut headers = Headers::new();
                headers.insert(header::SCHEMA.into(), messages::SCHEMA_COUNT.into());
                headers.insert(
                    header::TRACEPARENT.into(),
                    messages::new_traceparent().into(),
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
        self.broker.publish_all(messages).await?;
        self.metrics
            .published
            .with_label_values(&[Stage::Producer.as_str(), "counts"])
            .inc_by(count);
        Ok(())
    }

    /// Polls every `poll_interval` until `ctx.cancel`. A failed poll is logged and retried at
    /// the next interval, from the checkpoint.
    pub async fn run(&self, ctx: &Context) -> Result<(), ProducerError> {
        info!(statuses = ?self.config.statuses, poll_interval_s = self.config.poll_interval.0.as_secs(), "Producer polling.");
        loop {
            let poll = self.poll_once();
            tokio::pin!(poll);
            let result = tokio::select! {
                // A poll cut short by shutdown leaves the checkpoint at its last confirmed window.
                () = ctx.cancel.cancelled() => break,
                r = &mut poll => r,
            };
            match result {
                Ok(report) if report.published > 0 => {
                    info!(published = report.published, windows = report.windows, until = %report.until.map(|u| format_beijing(&u)).unwrap_or_default(), "Poll published documents.");
                }
                Ok(_) => debug!("Poll found nothing new."),
                Err(ProducerError::Checkpoint(e)) => {
                    error!(error = %e, "Checkpoint problem; the producer cannot continue safely.");
                    return Err(ProducerError::Checkpoint(e));
                }
                Err(ProducerError::Jst(e)) if e.is_configuration() => {
                    error!(error = %e, "Jushuitan refused the credentials or the app's permissions; check the jst section of the configuration. Retrying at the next poll.");
                }
                Err(e) => {
                    warn!(error = %e, "Poll failed; the next poll resumes from the checkpoint.")
                }
            }
            tokio::select! {
                () = ctx.cancel.cancelled() => break,
                () = tokio::time::sleep(self.config.poll_interval.0) => {}
            }
        }
        info!("Producer stopped.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_split_into_windows_of_at_most_seven_days() {
        let t = |s: &str| common::time::parse_beijing(s).expect("time");
        let w = windows(
            t("2026-01-01 00:00:00"),
            t("2026-01-20 12:00:00"),
            MAX_WINDOW,
        );
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], (t("2026-01-01 00:00:00"), t("2026-01-08 00:00:00")));
        assert_eq!(w[2], (t("2026-01-15 00:00:00"), t("2026-01-20 12:00:00")));
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
