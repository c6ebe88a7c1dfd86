//! The transformer's named events: documents skipped by reason and bills published, each
//! logging and counting in one place, with the handles resolved once. (Dead letters are the
//! settler's events, `common::events`.)

use common::events::PublishedTo;
use common::outcomes::{Outcome, OutcomeKind, OutcomeLog};
use common::queue::Work;
use common::telemetry::{IntCounter, Metrics, Stage};
use tracing::debug;

use crate::SkipReason;

/// The transformer's metric handles.
#[derive(Clone)]
pub struct TransformerEvents {
    outcomes: OutcomeLog,
    skipped: Vec<(SkipReason, IntCounter)>,
    bills: IntCounter,
}

impl TransformerEvents {
    /// Resolves the handles of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let s = Stage::Transformer.as_str();
        Self {
            outcomes: metrics.outcomes.clone(),
            skipped: SkipReason::ALL
                .iter()
                .map(|r| (*r, metrics.skipped.with_label_values(&[s, r.as_str()])))
                .collect(),
            bills: metrics
                .published
                .with_label_values(&[s, PublishedTo::Work(Work::Bills).label()]),
        }
    }

    /// Document `io_id` (message `message_id`) becomes no bill, for `reason`; it was acked.
    pub fn skipped(&self, message_id: &str, io_id: i64, reason: SkipReason) {
        if let Some((_, counter)) = self.skipped.iter().find(|(r, _)| *r == reason) {
            counter.inc();
        }
        self.outcomes.record(
            Outcome::new(Stage::Transformer, OutcomeKind::Skipped)
                .of_message(message_id)
                .of_document(Some(io_id))
                .with("reason", reason.as_str()),
        );
        debug!(io_id, reason = reason.as_str(), "Document skipped.");
    }

    /// Document `io_id` (message `message_id`) became the bills `bill_nos`, all published.
    pub fn mapped(
        &self,
        message_id: &str,
        io_id: i64,
        bill_nos: &[String],
        sent_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.outcomes.record(
            Outcome::new(Stage::Transformer, OutcomeKind::Mapped)
                .sent_at(sent_at)
                .of_message(message_id)
                .of_document(Some(io_id))
                .of_bill(bill_nos.first().map(String::as_str))
                .with("bills", bill_nos.to_vec()),
        );
        debug!(io_id, bill_no = ?bill_nos, "Bills published.");
    }

    /// `count` bills were published and confirmed.
    pub fn bills_published(&self, count: usize) {
        self.bills.inc_by(count as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_under_their_labels() {
        let metrics = Metrics::new(&[Stage::Transformer]);
        let events = TransformerEvents::new(&metrics);
        events.skipped("1@a", 1, SkipReason::Status);
        events.skipped("2@a", 2, SkipReason::NoLines);
        events.skipped("3@a", 3, SkipReason::NoLines);
        events.bills_published(4);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for line in [
            "jst2kd_skipped_total{reason=\"status\",stage=\"transformer\"} 1",
            "jst2kd_skipped_total{reason=\"no_lines\",stage=\"transformer\"} 2",
            "jst2kd_published_total{queue=\"bills\",stage=\"transformer\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
