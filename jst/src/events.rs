//! The Jushuitan client's telemetry as named events: every call counted by outcome and timed
//! (`jst2kd_jst_requests_total{outcome}`, `jst2kd_jst_request_seconds`), and the access token's
//! expiry (`jst2kd_jst_token_expiry_timestamp_seconds`), with the handles resolved once, when
//! the client is built.

use std::time::Instant;

use chrono::{DateTime, TimeZone};
use common::telemetry::{Gauge, Histogram, IntCounter, JST_OUTCOMES, Metrics};

use crate::JstError;

/// How a call ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with `code` 0.
    Ok,
    /// Refused for the rate limit (codes 199, 200).
    RateLimited,
    /// Refused for an expired or invalid token (code 100), or its renewal refused (150).
    TokenExpired,
    /// Any other failure.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::RateLimited,
        Outcome::TokenExpired,
        Outcome::Error,
    ];

    /// Label value (one of `telemetry::JST_OUTCOMES`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RateLimited => "rate_limited",
            Outcome::TokenExpired => "token_expired",
            Outcome::Error => "error",
        }
    }

    /// Of a call's result.
    pub fn of<T>(result: &Result<T, JstError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(JstError::Api {
                code: 199 | 200, ..
            }) => Outcome::RateLimited,
            // 100: invalid or expired; 150: a service provider's app may not renew it.
            Err(JstError::Api {
                code: 100 | 150, ..
            }) => Outcome::TokenExpired,
            Err(_) => Outcome::Error,
        }
    }
}

/// The client's metric handles, resolved once.
#[derive(Clone)]
pub struct JstEvents {
    requests: Vec<IntCounter>,
    seconds: Histogram,
    token_expiry: Gauge,
}

impl JstEvents {
    /// Resolves the handles of `metrics`, the token's under the app kind.
    pub fn new(metrics: &Metrics, kind: crate::AppKind) -> Self {
        debug_assert!(
            Outcome::ALL
                .iter()
                .all(|o| JST_OUTCOMES.contains(&o.label()))
        );
        Self {
            requests: Outcome::ALL
                .iter()
                .map(|o| metrics.jst_requests.with_label_values(&[o.label()]))
                .collect(),
            seconds: metrics.jst_request_seconds.clone(),
            token_expiry: metrics.jst_token_expiry.with_label_values(&[kind.as_str()]),
        }
    }

    /// One call, begun at `started`, ended as `outcome`.
    pub fn call(&self, started: Instant, outcome: Outcome) {
        self.seconds.observe(started.elapsed().as_secs_f64());
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(counter) = self.requests.get(i) {
            counter.inc();
        }
    }

    /// The access token in use expires at `at`.
    pub fn token_expires<Tz: TimeZone>(&self, at: &DateTime<Tz>) {
        self.token_expiry.set(at.timestamp() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::telemetry::Stage;

    #[test]
    fn every_outcome_counts_under_its_label() {
        let metrics = Metrics::new(&[Stage::Producer]);
        let events = JstEvents::new(&metrics, crate::AppKind::Own);
        let results: [Result<(), JstError>; 4] = [
            Ok(()),
            Err(JstError::Api {
                code: 199,
                msg: String::new(),
            }),
            Err(JstError::Api {
                code: 100,
                msg: String::new(),
            }),
            Err(JstError::Http(502)),
        ];
        for r in &results {
            events.call(Instant::now(), Outcome::of(r));
        }
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        for label in JST_OUTCOMES {
            assert!(
                text.contains(&format!(
                    "jst2kd_jst_requests_total{{outcome=\"{label}\"}} 1"
                )),
                "{label}:\n{text}"
            );
        }
    }
}
