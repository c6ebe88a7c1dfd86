//! Jittered exponential backoff (backon), the one way every retry loop here paces itself: the
//! broker supervisor's reconnects, the publish rounds after a lost connection, Jushuitan's
//! transient failures. Jitter keeps several workers that failed together from retrying
//! together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Pauses from `min` doubling up to `max`, jittered; `times` pauses at most (`None`: no end).
pub fn jittered(min: Duration, max: Duration, times: Option<usize>) -> ExponentialBackoff {
    let builder = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter();
    match times {
        Some(n) => builder.with_max_times(n).build(),
        None => builder.without_max_times().build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_bound_and_stop_after_times() {
        let pauses: Vec<Duration> = jittered(
            Duration::from_millis(100),
            Duration::from_millis(400),
            Some(5),
        )
        .collect();
        assert_eq!(pauses.len(), 5);
        // Jitter adds up to the pause again, never more.
        assert!(pauses.iter().all(|p| *p >= Duration::from_millis(100)));
        assert!(pauses.iter().all(|p| *p <= Duration::from_millis(800)));
        let mut endless = jittered(Duration::from_millis(1), Duration::from_millis(2), None);
        assert!((0..1000).all(|_| endless.next().is_some()));
    }
}
