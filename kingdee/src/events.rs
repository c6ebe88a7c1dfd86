//! The Kingdee client's telemetry as named events: one place that counts and times every call
//! (`jst2kd_kingdee_requests_total{op,outcome}`, `jst2kd_kingdee_request_seconds{op}`), with
//! labels from enums and the label handles resolved once, when the client is built.

use std::time::Instant;

use common::telemetry::{Histogram, IntCounter, KINGDEE_OPS, KINGDEE_OUTCOMES, Metrics};

use crate::{BillResult, KingdeeError};

/// A call to Kingdee, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `AuthService.LoginBySign` / `ValidateUser`.
    Login,
    /// `DynamicFormService.BatchSave`.
    BatchSave,
    /// `DynamicFormService.Submit`.
    Submit,
    /// `DynamicFormService.Audit`.
    Audit,
    /// `DynamicFormService.ExecuteBillQuery`.
    ExecuteBillQuery,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Login,
        Op::BatchSave,
        Op::Submit,
        Op::Audit,
        Op::ExecuteBillQuery,
    ];

    /// Label value (one of `telemetry::KINGDEE_OPS`).
    pub fn label(self) -> &'static str {
        match self {
            Op::Login => "login",
            Op::BatchSave => "batch_save",
            Op::Submit => "submit",
            Op::Audit => "audit",
            Op::ExecuteBillQuery => "execute_bill_query",
        }
    }
}

/// How a call ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, every bill saved (or nothing per bill to say).
    Ok,
    /// Answered, some bills refused.
    Partial,
    /// Failed in a way worth retrying.
    Transient,
    /// Failed for good.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Partial,
        Outcome::Transient,
        Outcome::Failed,
    ];

    /// Label value (one of `telemetry::KINGDEE_OUTCOMES`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Transient => "transient",
            Outcome::Failed => "failed",
        }
    }

    /// Of a call with no per-bill results.
    pub fn of<T>(result: &Result<T, KingdeeError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.is_transient() => Outcome::Transient,
            Err(_) => Outcome::Failed,
        }
    }

    /// Of a call answered bill by bill.
    pub fn of_bills(result: &Result<Vec<BillResult>, KingdeeError>) -> Self {
        match result {
            Ok(r) if r.iter().all(|b| matches!(b, BillResult::Saved { .. })) => Outcome::Ok,
            Ok(_) => Outcome::Partial,
            Err(_) => Self::of(result),
        }
    }
}

/// The client's metric handles, resolved once.
#[derive(Clone)]
pub struct CallMetrics {
    requests: Vec<IntCounter>,
    seconds: Vec<Histogram>,
}

impl CallMetrics {
    /// Resolves every (op, outcome) handle of `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        debug_assert!(Op::ALL.iter().all(|o| KINGDEE_OPS.contains(&o.label())));
        debug_assert!(
            Outcome::ALL
                .iter()
                .all(|o| KINGDEE_OUTCOMES.contains(&o.label()))
        );
        let mut requests = Vec::with_capacity(Op::ALL.len() * Outcome::ALL.len());
        for op in Op::ALL {
            for outcome in Outcome::ALL {
                requests.push(
                    metrics
                        .kingdee_requests
                        .with_label_values(&[op.label(), outcome.label()]),
                );
            }
        }
        let seconds = Op::ALL
            .iter()
            .map(|op| {
                metrics
                    .kingdee_request_seconds
                    .with_label_values(&[op.label()])
            })
            .collect();
        Self { requests, seconds }
    }

    /// One call of `op`, begun at `started`, ended as `outcome`.
    pub fn call(&self, op: Op, started: Instant, outcome: Outcome) {
        let o = Op::ALL.iter().position(|x| *x == op).unwrap_or(0);
        let r = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        if let Some(h) = self.seconds.get(o) {
            h.observe(started.elapsed().as_secs_f64());
        }
        if let Some(c) = self.requests.get(o * Outcome::ALL.len() + r) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::telemetry::Stage;

    #[test]
    fn each_call_counts_under_its_own_labels() {
        let metrics = Metrics::new(&[Stage::Loader]);
        let calls = CallMetrics::new(&metrics);
        calls.call(Op::Audit, Instant::now(), Outcome::Partial);
        calls.call(Op::Audit, Instant::now(), Outcome::Partial);
        calls.call(Op::Login, Instant::now(), Outcome::Transient);
        assert_eq!(
            Metrics::count(&metrics.kingdee_requests, &["audit", "partial"]),
            2
        );
        assert_eq!(
            Metrics::count(&metrics.kingdee_requests, &["login", "transient"]),
            1
        );
        assert_eq!(
            Metrics::count(&metrics.kingdee_requests, &["audit", "ok"]),
            0
        );
        assert_eq!(
            metrics
                .kingdee_request_seconds
                .with_label_values(&["audit"])
                .get_sample_count(),
            2
        );
    }
}
