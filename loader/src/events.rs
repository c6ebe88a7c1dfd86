//! The loader's named events: batch sizes, every bill settled by result, and the end-to-end
//! latency of a created bill, each logging and counting in one place, with the handles
//! resolved once. (Dead letters and retries are the settler's events, `common::events`.)

use common::outcomes::{Outcome, OutcomeKind, OutcomeLog};
use common::telemetry::{Histogram, IntCounter, LOADER_RESULTS, Metrics, Stage};
use kingdee::Operation;
use tracing::debug;

/// How a bill was settled, as the `result` label of `jst2kd_loader_bills_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Saved by this call; acked.
    Created,
    /// Already in Kingdee with the same entries; acked.
    Duplicate,
    /// In Kingdee with other entries; dead-lettered.
    Conflict,
    /// Refused by Kingdee; dead-lettered.
    Rejected,
    /// Transient failures outlasted the retry tiers; dead-lettered.
    Exhausted,
}

impl Settled {
    const ALL: [Settled; 5] = [
        Settled::Created,
        Settled::Duplicate,
        Settled::Conflict,
        Settled::Rejected,
        Settled::Exhausted,
    ];

    /// Label value (one of `telemetry::LOADER_RESULTS`).
    pub fn label(self) -> &'static str {
        match self {
            Settled::Created => "created",
            Settled::Duplicate => "duplicate",
            Settled::Conflict => "conflict",
            Settled::Rejected => "rejected",
            Settled::Exhausted => "exhausted",
        }
    }
}

/// The loader's metric handles.
#[derive(Clone)]
pub struct LoaderEvents {
    outcomes: OutcomeLog,
    bills: Vec<IntCounter>,
    batch_size: Histogram,
    end_to_end: Histogram,
}

impl LoaderEvents {
    /// Resolves the handles of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        debug_assert!(
            Settled::ALL
                .iter()
                .all(|r| LOADER_RESULTS.contains(&r.label()))
        );
        Self {
            outcomes: metrics.outcomes.clone(),
            bills: Settled::ALL
                .iter()
                .map(|r| metrics.loader_bills.with_label_values(&[r.label()]))
                .collect(),
            batch_size: metrics.loader_batch_size.clone(),
            end_to_end: metrics.end_to_end_seconds.clone(),
        }
    }

    /// A BatchSave call of `size` bills is about to be made.
    pub fn batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    /// Bill `bill_no` of document `io_id` was settled as `result`.
    pub fn settled(&self, result: Settled, io_id: i64, bill_no: &str) {
        let i = Settled::ALL.iter().position(|r| *r == result).unwrap_or(0);
        if let Some(counter) = self.bills.get(i) {
            counter.inc();
        }
        // Booked is recorded when Kingdee holds the bill (`booked`); rejected and exhausted
        // bills are the settler's dead letters.
        if result == Settled::Conflict {
            self.outcomes.record(
                Outcome::new(Stage::Loader, OutcomeKind::Conflict)
                    .of_document(Some(io_id))
                    .of_bill(Some(bill_no))
                    .of_message(bill_no),
            );
        }
        // The bill's span (the current one while it is settled) shows how it ended.
        tracing::Span::current().record("result", result.label());
        debug!(io_id, bill_no, result = result.label(), "Bill settled.");
    }

    /// Kingdee holds bill `bill_no` of document `io_id`: saved by this call (`created`) or
    /// before. Recorded when the save is known, before submit and audit, which can still
    /// send the bill to a retry.
    /// `id` is Kingdee's `FID` when the save answered it (a duplicate's is not asked for).
    pub fn booked(
        &self,
        io_id: i64,
        bill_no: &str,
        (form_id, id): (&str, Option<i64>),
        created: bool,
    ) {
        let mut outcome = Outcome::new(Stage::Loader, OutcomeKind::Booked)
            .of_document(Some(io_id))
            .of_bill(Some(bill_no))
            .of_message(bill_no)
            .with("result", if created { "created" } else { "duplicate" })
            .with("form", form_id);
        if let Some(id) = id {
            outcome = outcome.with("id", id);
        }
        self.outcomes.record(outcome);
    }

    /// Bill `bill_no` of document `io_id` was submitted or audited (or already was).
    pub fn operated(&self, op: Operation, io_id: i64, bill_no: &str) {
        let event = match op {
            Operation::Submit => OutcomeKind::Submitted,
            Operation::Audit => OutcomeKind::Audited,
        };
        self.outcomes.record(
            Outcome::new(Stage::Loader, event)
                .of_document(Some(io_id))
                .of_bill(Some(bill_no))
                .of_message(bill_no),
        );
    }

    /// A bill was created `secs` after the producer published its document.
    pub fn end_to_end(&self, secs: f64) {
        self.end_to_end.observe(secs.max(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::telemetry::Stage;

    #[test]
    fn every_result_counts_under_its_label() {
        let metrics = Metrics::new(&[Stage::Loader]);
        let events = LoaderEvents::new(&metrics);
        for result in Settled::ALL {
            events.settled(result, 1, "JSTPD1");
        }
        events.batch(3);
        events.end_to_end(-1.0);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for label in LOADER_RESULTS {
            assert!(
                text.contains(&format!(
                    "jst2kd_loader_bills_total{{result=\"{label}\"}} 1"
                )),
                "{label}:\n{text}"
            );
        }
        assert!(text.contains("jst2kd_loader_batch_size_sum 3"), "{text}");
        assert!(text.contains("jst2kd_end_to_end_seconds_sum 0"), "{text}");
    }
}
