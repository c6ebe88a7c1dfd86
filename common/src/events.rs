//! The named events of what every consuming stage shares (intake, retries, dead letters) and
//! of the broker connection: each is one method that logs and counts together, with labels
//! from enums and the metric handles resolved once, when the stage starts.
//!
//! Each crate has its own events beside its code (`jst::events`, `kingdee::events`,
//! `producer::events`, `transformer::events`, `loader::events`); [`crate::telemetry`] defines
//! the metrics themselves (SPEC section 7).

use prometheus::{IntCounter, IntGauge};
use tracing::warn;

use crate::http::escape;
use crate::outcomes::{Outcome, OutcomeKind, OutcomeLog};
use crate::queue::Work;
use crate::settle::DeadReason;
use crate::settle::truncate;
use crate::telemetry::{DeadKind, Metrics, Stage};

/// How much of a reason an outcome event keeps (the dead letter keeps the whole).
pub const OUTCOME_REASON_BYTES: usize = 1024;

/// Where a stage published a message, as the `queue` label of `jst2kd_published_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishedTo {
    /// A work queue (`counts`, `bills`).
    Work(Work),
    /// A retry tier.
    Retry,
    /// The dead letters.
    Dead,
}

impl PublishedTo {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            PublishedTo::Work(work) => work.key(),
            PublishedTo::Retry => "retry",
            PublishedTo::Dead => "dead",
        }
    }
}

/// One stage's intake, retry and dead-letter events.
#[derive(Clone)]
pub struct StageEvents {
    stage: Stage,
    outcomes: OutcomeLog,
    consumed: IntCounter,
    retried: IntCounter,
    published_retry: IntCounter,
    published_dead: IntCounter,
    dead: Vec<(DeadKind, IntCounter)>,
}

impl StageEvents {
    /// Resolves the handles of `stage`.
    pub fn new(metrics: &Metrics, stage: Stage) -> Self {
        let s = stage.as_str();
        let published = |to: PublishedTo| metrics.published.with_label_values(&[s, to.label()]);
        Self {
            stage,
            outcomes: metrics.outcomes.clone(),
            consumed: metrics.consumed.with_label_values(&[s]),
            retried: metrics.retried.with_label_values(&[s]),
            published_retry: published(PublishedTo::Retry),
            published_dead: published(PublishedTo::Dead),
            dead: DeadKind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        metrics.dead_lettered.with_label_values(&[s, k.as_str()]),
                    )
                })
                .collect(),
        }
    }

    /// The stage these events are of.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// A delivery was received.
    pub fn consumed(&self) {
        self.consumed.inc();
    }

    /// A copy of message `message_id` went to retry tier `tier` (0-based, waiting `delay`;
    /// confirmed) and the original was settled; `bill` names the bill when the message is one.
    pub fn retried(
        &self,
        message_id: &str,
        (tier, delay): (usize, std::time::Duration),
        attempt: i64,
        why: &str,
        bill: Option<(i64, &str)>,
    ) {
        self.published_retry.inc();
        self.retried.inc();
        self.outcomes.record(
            Outcome::new(self.stage, OutcomeKind::Retried)
                .of_message(message_id)
                .of_document(bill.map(|(io_id, _)| io_id))
                .of_bill(bill.map(|(_, bill_no)| bill_no))
                .with("tier", tier)
                .with("delay_s", delay.as_secs())
                .with("attempt", attempt)
                .with("reason", truncate(why, OUTCOME_REASON_BYTES)),
        );
    }

    /// A dead letter was confirmed. `jst2kd_dead_lettered_total` drives the alert; the log
    /// line says which message (and document, and bill, when known) and why.
    pub fn dead_lettered(&self, message_id: &str, reason: &DeadReason) {
        self.published_dead.inc();
        if let Some((_, counter)) = self.dead.iter().find(|(k, _)| *k == reason.kind) {
            counter.inc();
        }
        self.outcomes.record(
            Outcome::new(self.stage, OutcomeKind::DeadLettered)
                .of_message(message_id)
                .of_document(reason.io_id)
                .of_bill(reason.bill_no.as_deref())
                .with("kind", reason.kind.as_str())
                .with("reason", truncate(&reason.error, OUTCOME_REASON_BYTES)),
        );
        warn!(
            stage = self.stage.as_str(),
            kind = reason.kind.as_str(),
            message_id = %escape(message_id),
            io_id = reason.io_id,
            bill_no = reason.bill_no.as_deref().map(escape),
            error = %escape(&reason.error),
            "Dead-lettered: {}.",
            what(reason.kind)
        );
    }

    /// A dead letter (of `kind`) or a retry copy (`None`) could not be published: the
    /// delivery goes back to its queue (the broker's delivery limit bounds the loop).
    pub fn not_settled(
        &self,
        message_id: &str,
        kind: Option<DeadKind>,
        error: &dyn std::fmt::Display,
    ) {
        warn!(
            stage = self.stage.as_str(),
            message_id = %escape(message_id),
            kind = kind.map(DeadKind::as_str),
            error = %error,
            "Cannot publish the {}; the message goes back to its queue.",
            if kind.is_some() { "dead letter" } else { "retry copy" }
        );
    }

    /// A retry copy was confirmed but the original could not be acked: it comes again (and
    /// is retried twice, harmlessly: bill numbers make the second a duplicate).
    pub fn retry_not_acked(&self, message_id: &str, error: &dyn std::fmt::Display) {
        warn!(
            stage = self.stage.as_str(),
            message_id = %escape(message_id),
            error = %error,
            "The retry copy is published but the original could not be acked; it will come again."
        );
    }
}

/// Why a message was dead-lettered, for a person reading the log.
fn what(kind: DeadKind) -> &'static str {
    match kind {
        DeadKind::Malformed => "the message cannot be read",
        DeadKind::Mapping => "the configuration has no mapping for it",
        DeadKind::Rejected => "Kingdee refused the bill",
        DeadKind::Conflict => {
            "the bill number exists in Kingdee with other entries; a person must decide"
        }
        DeadKind::Exhausted => "transient failures outlasted the retry tiers",
        DeadKind::TooLarge => "it is too large",
    }
}

/// The broker connection as the metrics show it: `jst2kd_amqp_connected` and
/// `jst2kd_queue_messages{queue}`.
#[derive(Clone)]
pub struct BrokerEvents {
    connected: IntGauge,
    depths: Vec<(&'static str, IntGauge)>,
}

impl BrokerEvents {
    /// Resolves the handles; `consumes` is the work queue whose depth this process shows.
    pub fn new(metrics: &Metrics, consumes: Option<Work>) -> Self {
        let depths = consumes
            .map(|w| w.key())
            .into_iter()
            .chain(consumes.map(|_| "dead"))
            .map(|q| (q, metrics.queue_messages.with_label_values(&[q])))
            .collect();
        Self {
            connected: metrics.amqp_connected.clone(),
            depths,
        }
    }

    /// Connected (and the topology declared) or not.
    pub fn connected(&self, ready: bool) {
        self.connected.set(i64::from(ready));
    }

    /// Messages ready in `queue` (`counts`, `bills` or `dead`).
    pub fn depth(&self, queue: &str, depth: u64) {
        if let Some((_, gauge)) = self.depths.iter().find(|(q, _)| *q == queue) {
            gauge.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_count_under_their_labels() {
        let metrics = Metrics::new(&[Stage::Loader]);
        let events = StageEvents::new(&metrics, Stage::Loader);
        events.consumed();
        events.retried(
            "1@2026-01-01 00:00:00",
            (0, std::time::Duration::from_secs(5)),
            1,
            "kingdee timed out",
            None,
        );
        events.dead_lettered(
            "JSTPD1",
            &DeadReason::new(DeadKind::Conflict, "other entries").of_bill(1, "JSTPD1"),
        );
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for line in [
            "jst2kd_consumed_total{stage=\"loader\"} 1",
            "jst2kd_retried_total{stage=\"loader\"} 1",
            "jst2kd_published_total{queue=\"retry\",stage=\"loader\"} 1",
            "jst2kd_published_total{queue=\"dead\",stage=\"loader\"} 1",
            "jst2kd_dead_lettered_total{kind=\"conflict\",stage=\"loader\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let broker = BrokerEvents::new(&metrics, Some(Work::Bills));
        broker.connected(true);
        broker.depth("bills", 7);
        broker.depth("dead", 2);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(text.contains("jst2kd_amqp_connected 1"), "{text}");
        assert!(
            text.contains("jst2kd_queue_messages{queue=\"bills\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("jst2kd_queue_messages{queue=\"dead\"} 2"),
            "{text}"
        );
    }
}
