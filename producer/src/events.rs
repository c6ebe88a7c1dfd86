//! The producer's named events: documents published, versions already published, and the
//! checkpoint, each logging and counting in one place, with the handles resolved once.

use std::fmt::Display;

use chrono::{DateTime, FixedOffset};
use common::events::PublishedTo;
use common::outcomes::{Outcome, OutcomeKind, OutcomeLog};
use common::queue::Work;
use common::telemetry::{Gauge, IntCounter, Metrics, Stage};
use common::time::format_beijing;
use tracing::{debug, info, warn};

/// The producer's metric handles.
#[derive(Clone)]
pub struct ProducerEvents {
    outcomes: OutcomeLog,
    published: IntCounter,
    already_published: IntCounter,
    checkpoint: Gauge,
}

impl ProducerEvents {
    /// Resolves the handles of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let s = Stage::Producer.as_str();
        Self {
            outcomes: metrics.outcomes.clone(),
            published: metrics
                .published
                .with_label_values(&[s, PublishedTo::Work(Work::Counts).label()]),
            already_published: metrics.skipped.with_label_values(&[s, "already_published"]),
            checkpoint: metrics.checkpoint_timestamp.clone(),
        }
    }

    /// Documents (by message id, `{io_id}@{modified}`) read on `page` of the window
    /// `[begin, end]` for `status`, not seen before in this window.
    pub fn fetched<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        (begin, end): (&DateTime<FixedOffset>, &DateTime<FixedOffset>),
        status: &str,
        page: u32,
    ) {
        let window = format!("{} – {}", format_beijing(begin), format_beijing(end));
        for id in ids {
            self.outcomes.record(
                Outcome::new(Stage::Producer, OutcomeKind::Fetched)
                    .of_version(id)
                    .with("window", window.as_str())
                    .with("status", status)
                    .with("page", page),
            );
        }
    }

    /// Documents (by message id) were published and confirmed.
    pub fn published(&self, ids: &[String], sent_at: chrono::DateTime<chrono::Utc>) {
        self.published.inc_by(ids.len() as u64);
        for id in ids {
            self.outcomes.record(
                Outcome::new(Stage::Producer, OutcomeKind::Published)
                    .of_version(id)
                    .sent_at(sent_at),
            );
        }
    }

    /// `count` documents of a page were versions this process had already published (the
    /// overlap of two polls): not published again.
    pub fn already_published(&self, count: usize) {
        self.already_published.inc_by(count as u64);
    }

    /// The checkpoint read at the start of a poll.
    pub fn checkpoint_read(&self, until: &DateTime<FixedOffset>) {
        self.checkpoint.set(until.timestamp() as f64);
    }

    /// A window was read whole, its documents confirmed, and the checkpoint moved to its end.
    pub fn window_done(
        &self,
        begin: &DateTime<FixedOffset>,
        end: &DateTime<FixedOffset>,
        fetched: usize,
        published: usize,
    ) {
        self.checkpoint.set(end.timestamp() as f64);
        debug!(from = %format_beijing(begin), to = %format_beijing(end), fetched, published, "Window published; checkpoint advanced.");
    }

    /// A window of a backfill request was fetched and its documents confirmed (they count in
    /// `jst2kd_published_total` like the polls').
    pub fn backfill_window(&self, id: &str, done: usize, windows: usize, published: usize) {
        info!(
            request = id,
            done, windows, published, "Backfill window published."
        );
    }

    /// A backfill request stopped on a failure; its requester was told where to resume.
    pub fn backfill_failed(&self, id: &str, done: usize, windows: usize, error: &dyn Display) {
        warn!(request = id, done, windows, error = %error, "Backfill request failed; its requester was told where to start again.");
    }

    /// The requester of a backfill is gone (interrupted, or its connection dropped): the
    /// request is dropped.
    pub fn requester_gone(&self, id: &str, done: usize, windows: usize) {
        info!(
            request = id,
            done, windows, "The requester of a backfill is gone; request dropped."
        );
    }

    /// An older copy of a request this holder already took further: dropped.
    pub fn stale_request(&self, id: &str, done: usize) {
        info!(
            request = id,
            done, "An older copy of a backfill request; dropped (the newer goes on)."
        );
    }

    /// A message on the control queue that is no backfill request: dropped.
    pub fn unreadable_request(&self, error: &str) {
        warn!(error = %common::http::escape(error), "Unreadable message on the control queue; dropped.");
    }

    /// The control queue cannot be read (the lock's connection is failing).
    pub fn control_unavailable(&self, error: &dyn Display) {
        warn!(error = %error, "Cannot read the control queue; backfill requests wait.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_under_their_labels() {
        let metrics = Metrics::new(&[Stage::Producer]);
        let events = ProducerEvents::new(&metrics);
        events.published(
            &["1@a".into(), "2@b".into(), "3@c".into()],
            chrono::Utc::now(),
        );
        events.already_published(2);
        let at = common::time::parse_beijing("2026-01-01 08:00:00").expect("time");
        events.window_done(&at, &at, 5, 3);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for line in [
            "jst2kd_published_total{queue=\"counts\",stage=\"producer\"} 3",
            "jst2kd_skipped_total{reason=\"already_published\",stage=\"producer\"} 2",
            "jst2kd_producer_checkpoint_timestamp_seconds 1767225600",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
