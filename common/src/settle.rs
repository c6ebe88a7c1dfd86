//! Retry tiers and dead letters, shared by the transformer and the loader.
//!
//! Invariant: the original delivery is acked only after its retry or dead letter was confirmed
//! by the broker; when that publish fails, the delivery is requeued instead (and the broker's
//! delivery limit still bounds the loop).
//!
//! A retry or dead-letter copy carries a bounded copy of the original's headers
//! ([`bounded_headers`]): the copy gains headers of its own, and a header frame that outgrows
//! the broker's `frame_max` makes it close the connection. So one message with a huge header
//! can neither stop a worker nor churn the connection under innocent messages.

use serde_json::Value;

use crate::events::StageEvents;
use crate::messages::{Headers, header, header_int};
use crate::queue::{Broker, Delivery, Destination, Outgoing, QueueError, Work};
use crate::telemetry::DeadKind;
use crate::time::rfc3339_now;

/// Longest `jst2kd-error`.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;
/// Longest value of a header copied from the original onto a retry or dead-letter copy.
pub const MAX_COPIED_HEADER_BYTES: usize = 4 * 1024;
/// Most bytes (AMQP-encoded) of the original's headers a copy carries; with our own dead-letter
/// headers (at most about 37 KiB) it stays well inside RabbitMQ's default 128 KiB frame.
pub const MAX_COPIED_HEADERS_BYTES: usize = 32 * 1024;
/// Longest `jst2kd-kingdee-errors` (a header must fit in one AMQP frame).
pub const MAX_KINGDEE_ERRORS_BYTES: usize = 16 * 1024;
const TRUNCATED: &str = "…[truncated]";
/// How long a delivery whose republish failed is held before it is requeued.
pub const REQUEUE_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// What to do with a message that failed transiently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTry {
    /// Publish to this tier (0-based) with this `jst2kd-attempt`.
    Retry {
        /// Tier index.
        tier: usize,
        /// Header value to send.
        attempt: i64,
    },
    /// Every tier was used: dead-letter as `exhausted`.
    Exhausted,
}

/// Decides the next try from the `jst2kd-attempt` a message carries and the number of tiers.
pub fn next_try(attempt_so_far: Option<i64>, tiers: usize) -> NextTry {
    let done = attempt_so_far.unwrap_or(0).max(0);
    let tier = usize::try_from(done).unwrap_or(usize::MAX);
    if tier >= tiers {
        NextTry::Exhausted
    } else {
        NextTry::Retry {
            tier,
            attempt: done + 1,
        }
    }
}

/// Cuts text to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &text[..end])
}

/// A copy of `headers` small enough to publish again: our own headers first (they drive
/// retries and replay), then the others in name order; a text value over
/// [`MAX_COPIED_HEADER_BYTES`] is cut, other values over it are left out, and so is whatever
/// would take the copy past [`MAX_COPIED_HEADERS_BYTES`]. When anything was cut or left out,
/// `jst2kd-headers-truncated` names it, so a person reading the dead letter knows.
pub fn bounded_headers(headers: &Headers) -> Headers {
    let ours = |name: &str| name.starts_with("jst2kd-") || name == header::TRACEPARENT;
    let ordered = headers
        .iter()
        .filter(|(n, _)| ours(n))
        .chain(headers.iter().filter(|(n, _)| !ours(n)));
    let mut copy = Headers::new();
    let mut cut: Vec<&str> = Vec::new();
    let mut used = 0;
    for (name, value) in ordered {
        if name == header::HEADERS_TRUNCATED {
            continue;
        }
        let value = match value {
            Value::String(s) if s.len() > MAX_COPIED_HEADER_BYTES => {
                cut.push(name);
                Value::String(truncate(s, MAX_COPIED_HEADER_BYTES))
            }
            other => other.clone(),
        };
        let size = crate::queue::encoded_header_len(name, &value);
        if name.len() > 255
            || size > MAX_COPIED_HEADER_BYTES + 300
            || used + size > MAX_COPIED_HEADERS_BYTES
        {
            if cut.last() != Some(&name.as_str()) {
                cut.push(name);
            }
            continue;
        }
        used += size;
        copy.insert(name.clone(), value);
    }
    if !cut.is_empty() {
        let names: Vec<String> = cut
            .iter()
            .map(|n| crate::http::escape(&truncate(n, 64)))
            .collect();
        copy.insert(
            header::HEADERS_TRUNCATED.into(),
            truncate(&names.join(", "), 1024).into(),
        );
    }
    copy
}

/// Why a message goes to the dead letters.
#[derive(Clone, Debug)]
pub struct DeadReason {
    /// `jst2kd-error-kind`.
    pub kind: DeadKind,
    /// `jst2kd-error`.
    pub error: String,
    /// `jst2kd-kingdee-errors` (JSON), for bills Kingdee answered.
    pub kingdee_errors: Option<Value>,
    /// `jst2kd-kingdee-existing`: what Kingdee holds under the same bill number (conflicts).
    pub existing: Option<Value>,
    /// The document concerned, when known (logged with the dead letter).
    pub io_id: Option<i64>,
    /// The bill concerned, when known (logged with the dead letter).
    pub bill_no: Option<String>,
}

impl DeadReason {
    /// A reason with a kind and a message only.
    pub fn new(kind: DeadKind, error: impl Into<String>) -> Self {
        Self {
            kind,
            error: error.into(),
            kingdee_errors: None,
            existing: None,
            io_id: None,
            bill_no: None,
        }
    }

    /// Of document `io_id`.
    pub fn of_document(mut self, io_id: i64) -> Self {
        self.io_id = Some(io_id);
        self
    }

    /// Of bill `bill_no` of document `io_id`.
    pub fn of_bill(mut self, io_id: i64, bill_no: &str) -> Self {
        self.io_id = Some(io_id);
        self.bill_no = Some(bill_no.to_string());
        self
    }
}

/// Sends failed messages of one stage to retry tiers or the dead letters.
#[derive(Clone)]
pub struct Settler {
    broker: Broker,
    events: StageEvents,
    origin: Work,
}

impl Settler {
    /// For the stage of `events`, which consumes `origin`.
    pub fn new(broker: Broker, events: StageEvents, origin: Work) -> Self {
        Self {
            broker,
            events,
            origin,
        }
    }

    /// The stage's intake, retry and dead-letter events.
    pub fn events(&self) -> &StageEvents {
        &self.events
    }

    /// Why a delivery must be dead-lettered unread: its body is over `amqp.max_message_bytes`.
    /// Checked before parsing, so one huge message cannot take a worker's memory.
    pub fn oversized(&self, delivery: &Delivery) -> Option<DeadReason> {
        let limit = self.broker.topology().max_message_bytes;
        (delivery.body.len() > limit).then(|| {
            DeadReason::new(
                DeadKind::TooLarge,
                format!(
                    "body of {} bytes is over amqp.max_message_bytes ({limit}); not read",
                    delivery.body.len()
                ),
            )
        })
    }

    /// The dead-letter message for a delivery (pure, for tests and `dlq` tools).
    pub fn dead_message(&self, delivery: &Delivery, reason: &DeadReason) -> Outgoing {
        let topology = self.broker.topology();
        let mut headers: Headers = bounded_headers(&delivery.headers);
        headers.insert(header::STAGE.into(), self.events.stage().as_str().into());
        headers.insert(header::ERROR_KIND.into(), reason.kind.as_str().into());
        headers.insert(
            header::ERROR.into(),
            truncate(&reason.error, MAX_ERROR_BYTES).into(),
        );
        for (name, value) in [
            (header::KINGDEE_ERRORS, &reason.kingdee_errors),
            (header::KINGDEE_EXISTING, &reason.existing),
        ] {
            if let Some(v) = value {
                headers.insert(
                    name.into(),
                    truncate(&v.to_string(), MAX_KINGDEE_ERRORS_BYTES).into(),
                );
            }
        }
        headers.insert(
            header::ORIGIN_QUEUE.into(),
            topology.work_queue(self.origin).into(),
        );
        headers.insert(header::ORIGIN_KEY.into(), self.origin.key().into());
        headers.insert(header::FAILED_AT.into(), rfc3339_now().into());
        Outgoing {
            destination: Destination::Dead,
            message_id: delivery.message_id.clone().unwrap_or_default(),
            headers,
            body: delivery.body.clone(),
        }
    }

    /// Dead-letters a delivery: publish (confirmed), then ack; requeue if the publish failed.
    pub async fn dead_letter(
        &self,
        delivery: Delivery,
        reason: DeadReason,
    ) -> Result<(), QueueError> {
        let mut message = self.dead_message(&delivery, &reason);
        let mut published = self.broker.publish(message.clone()).await;
        if matches!(published, Err(QueueError::TooLarge { .. })) {
            // Even the bounded copy does not fit (a broker with a small frame_max): keep the
            // dead-letter headers alone, which replay and the dlq tools need.
            message.headers.retain(|name, _| {
                (name.starts_with("jst2kd-") || name == header::TRACEPARENT)
                    && name != header::KINGDEE_ERRORS
                    && name != header::KINGDEE_EXISTING
            });
            message.headers.insert(
                header::HEADERS_TRUNCATED.into(),
                "(all but the dead-letter headers)".into(),
            );
            published = self.broker.publish(message).await;
        }
        match published {
            Ok(()) => {
                let id = delivery.message_id.as_deref().unwrap_or("");
                self.events.dead_lettered(id, &reason);
                // The dead letter keeps the traceparent; the span of the work on it says why.
                crate::traces::dead_lettered(reason.kind.as_str(), &reason.error);
                delivery.ack().await
            }
            Err(err) => {
                let id = delivery.message_id.as_deref().unwrap_or("");
                self.events.not_settled(id, Some(reason.kind), &err);
                delivery
                    .requeue_after(crate::settle::REQUEUE_PAUSE)
                    .await
                    .ok();
                Err(err)
            }
        }
    }

    /// Sends a delivery that failed transiently to its next retry tier, or dead-letters it as
    /// `exhausted` when the tiers ran out.
    ///
    /// `bill` names the bill (document and number) for the log of an `exhausted` dead letter.
    pub async fn retry(
        &self,
        delivery: Delivery,
        error: String,
        bill: Option<(i64, &str)>,
    ) -> Result<NextTry, QueueError> {
        let tiers = self.broker.topology().retry_delays.len();
        let next = next_try(header_int(&delivery.headers, header::ATTEMPT), tiers);
        match next {
            NextTry::Exhausted => {
                let mut reason = DeadReason::new(
                    DeadKind::Exhausted,
                    format!("gave up after {tiers} retries: {error}"),
                );
                if let Some((io_id, bill_no)) = bill {
                    reason = reason.of_bill(io_id, bill_no);
                }
                self.dead_letter(delivery, reason).await?;
            }
            NextTry::Retry { tier, attempt } => {
                let delivery_id = delivery.message_id.clone();
                let mut headers = bounded_headers(&delivery.headers);
                headers.insert(header::ATTEMPT.into(), attempt.into());
                let message = Outgoing {
                    destination: Destination::Retry(self.origin, tier),
                    message_id: delivery.message_id.clone().unwrap_or_default(),
                    headers,
                    body: delivery.body.clone(),
                };
                if let Err(err) = self.broker.publish(message).await {
                    let id = delivery.message_id.as_deref().unwrap_or("");
                    self.events.not_settled(id, None, &err);
                    delivery
                        .requeue_after(crate::settle::REQUEUE_PAUSE)
                        .await
                        .ok();
                    return Err(err);
                }
                let delay = self
                    .broker
                    .topology()
                    .retry_delays
                    .get(tier)
                    .copied()
                    .unwrap_or_default();
                self.events.retried(
                    delivery_id.as_deref().unwrap_or(""),
                    (tier, delay),
                    attempt,
                    &error,
                    bill,
                );
                if let Err(err) = delivery.ack().await {
                    let id = delivery_id.as_deref().unwrap_or("");
                    self.events.retry_not_acked(id, &err);
                    return Err(err);
                }
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_used_in_order_then_exhausted() {
        let table = [
            (
                None,
                4,
                NextTry::Retry {
                    tier: 0,
                    attempt: 1,
                },
            ),
            (
                Some(1),
                4,
                NextTry::Retry {
                    tier: 1,
                    attempt: 2,
                },
            ),
            (
                Some(3),
                4,
                NextTry::Retry {
                    tier: 3,
                    attempt: 4,
                },
            ),
            (Some(4), 4, NextTry::Exhausted),
            (
                Some(-3),
                4,
                NextTry::Retry {
                    tier: 0,
                    attempt: 1,
                },
            ),
            (None, 0, NextTry::Exhausted),
        ];
        for (attempt, tiers, expected) in table {
            assert_eq!(next_try(attempt, tiers), expected, "{attempt:?} of {tiers}");
        }
    }

    #[test]
    fn copied_headers_are_bounded_and_say_what_was_cut() {
        let mut headers = Headers::new();
        headers.insert("jst2kd-attempt".into(), 2.into());
        headers.insert(header::TRACEPARENT.into(), "00-abc-def-01".into());
        headers.insert("huge".into(), "x".repeat(130_000).into());
        headers.insert(
            "nested".into(),
            Value::Array(vec![Value::String("y".repeat(3000)); 5]),
        );
        for i in 0..40 {
            headers.insert(format!("z{i:02}"), "z".repeat(1000).into());
        }
        let copy = bounded_headers(&headers);
        assert!(crate::queue::encoded_headers_len(&copy) <= MAX_COPIED_HEADERS_BYTES + 1100);
        assert_eq!(copy.get("jst2kd-attempt"), Some(&Value::from(2)));
        assert!(copy.contains_key(header::TRACEPARENT));
        let huge = copy
            .get("huge")
            .and_then(Value::as_str)
            .expect("cut, not dropped");
        assert!(huge.len() <= MAX_COPIED_HEADER_BYTES && huge.ends_with(TRUNCATED));
        assert!(!copy.contains_key("nested"));
        let said = copy
            .get(header::HEADERS_TRUNCATED)
            .and_then(Value::as_str)
            .expect("says what was cut");
        assert!(
            said.contains("huge") && said.contains("nested") && said.contains("z39"),
            "{said}"
        );
        // Small headers are copied as they are, without a note.
        let mut small = Headers::new();
        small.insert("x-death".into(), Value::Array(vec![]));
        small.insert("jst2kd-schema".into(), "kd.bill.v1".into());
        assert_eq!(bounded_headers(&small), small);
    }

    #[test]
    fn ids_and_header_names_beyond_a_short_string_are_refused_not_sent() {
        let message = |id: String, name: String| crate::queue::Outgoing {
            destination: crate::queue::Destination::Dead,
            message_id: id,
            headers: [(name, Value::from(1))].into_iter().collect(),
            body: Vec::new(),
        };
        let ok = message("a".repeat(255), "h".repeat(255));
        assert!(crate::queue::check_size(&ok, 131_072).is_ok());
        for bad in [
            message("a".repeat(256), "h".into()),
            message("a".into(), "h".repeat(256)),
        ] {
            assert!(matches!(
                crate::queue::check_size(&bad, 131_072),
                Err(QueueError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn truncation_keeps_utf8_and_marks_the_cut() {
        let long = "错".repeat(3000);
        let cut = truncate(&long, MAX_ERROR_BYTES);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.ends_with(TRUNCATED));
        assert_eq!(truncate("short", 10), "short");
    }
}
