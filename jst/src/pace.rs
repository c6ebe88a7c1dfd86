//! Request pacing under Jushuitan's two limits: at most N calls in **any** sliding 1-second
//! window and M in any sliding 60-second window (defaults 5 and 100).
//!
//! A token bucket would allow a burst of M at the start of a minute and then M more as tokens
//! refill: about twice the quota in the first minute, which the platform answers with code 200.
//! A log of recent call times gives exactly "no more than N in any window" instead.
//!
//! Invariant: `acquire` returns only when the call it admits keeps both windows within their
//! limits; callers are admitted in order.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The windows the pacer keeps are a little longer than the platform's: requests reach it with
/// varying delay, and two calls sent exactly 1 s apart can arrive 0.99 s apart.
const SECOND_PACED: Duration = Duration::from_millis(1_100);
const MINUTE_PACED: Duration = Duration::from_secs(61);

/// Paces calls under a per-second and a per-minute limit (0 turns a limit off).
#[derive(Debug)]
pub struct Pacer {
    per_second: usize,
    per_minute: usize,
    sent: Mutex<VecDeque<Instant>>,
}

impl Pacer {
    /// A pacer with these limits; 0 means unlimited.
    pub fn new(per_second: u32, per_minute: u32) -> Self {
        Self {
            per_second: per_second as usize,
            per_minute: per_minute as usize,
            sent: Mutex::new(VecDeque::new()),
        }
    }

    /// True when both limits are off.
    pub fn is_off(&self) -> bool {
        self.per_second == 0 && self.per_minute == 0
    }

    /// Waits until one more call fits in both windows, then records it.
    pub async fn acquire(&self) {
        if self.is_off() {
            return;
        }
        // Holding the lock while sleeping admits waiters one by one, in order.
        let mut sent = self.sent.lock().await;
        loop {
            let now = Instant::now();
            while sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= MINUTE_PACED)
            {
                sent.pop_front();
            }
            let wait = self.wait_needed(&sent, now);
            match wait {
                None => {
                    sent.push_back(now);
                    return;
                }
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// How long until one more call fits, or `None` when it fits now.
    fn wait_needed(&self, sent: &VecDeque<Instant>, now: Instant) -> Option<Duration> {
        let mut wait = Duration::ZERO;
        if self.per_minute > 0 && sent.len() >= self.per_minute {
            // The call `per_minute` back must leave the 60 s window.
            let oldest = sent[sent.len() - self.per_minute];
            wait = wait.max(MINUTE_PACED.saturating_sub(now.duration_since(oldest)));
        }
        if self.per_second > 0 {
            let in_last_second = sent
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < SECOND_PACED)
                .count();
            if in_last_second >= self.per_second {
                let oldest = sent[sent.len() - self.per_second];
                wait = wait.max(SECOND_PACED.saturating_sub(now.duration_since(oldest)));
            }
        }
        (!wait.is_zero()).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The platform's windows, which the pacer's must cover.
    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);

    /// The largest number of calls in any window of `len` ending at a call.
    fn max_in_window(times: &[Instant], len: Duration) -> usize {
        times
            .iter()
            .map(|end| {
                times
                    .iter()
                    .filter(|t| **t <= *end && end.duration_since(**t) < len)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_its_limit() {
        let pacer = Pacer::new(5, 100);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..250 {
            pacer.acquire().await;
            times.push(Instant::now());
        }
        assert!(max_in_window(&times, SECOND) <= 5);
        assert!(max_in_window(&times, MINUTE) <= 100);
        // Five calls every 1.1 s: 1–100 by 20.9 s, 101–200 from 61 s, 201–250 from 122 s,
        // the last at 131.9 s: the limits with their margins, and no slower.
        let took = Instant::now().duration_since(start);
        assert_eq!(took, Duration::from_millis(131_900), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_second_limit_alone_spreads_calls() {
        let pacer = Pacer::new(5, 0);
        let start = Instant::now();
        for _ in 0..11 {
            pacer.acquire().await;
        }
        assert_eq!(
            Instant::now().duration_since(start),
            Duration::from_millis(2_200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn off_means_no_waiting() {
        let pacer = Pacer::new(0, 0);
        let start = Instant::now();
        for _ in 0..1000 {
            pacer.acquire().await;
        }
        assert_eq!(Instant::now(), start);
    }
}
