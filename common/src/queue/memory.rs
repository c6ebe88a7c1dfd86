//! An in-process broker with RabbitMQ's semantics, so `jst2kd demo` runs without one.
//!
//! Same contract as the RabbitMQ adapter: publishing stores the message before it returns;
//! a delivery is held until acked or requeued (and requeued if dropped unsettled, as a closed
//! channel would); a requeue past the delivery limit moves the message to the dead letters,
//! with an `x-death` entry like RabbitMQ's; a retry tier holds a message for its delay, then
//! returns it to its work queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::Notify;

use super::{Acker, Delivery, Destination, Outgoing, QueueError, Topology, Work};
use crate::messages::{Headers, header};

#[derive(Clone, Debug)]
struct Stored {
    message_id: String,
    headers: Headers,
    body: Vec<u8>,
    deliveries: u32,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Stored>,
    unacked: HashMap<u64, Stored>,
}

/// Outcome events the in-process stream keeps (a demo's worth).
const EVENTS_KEPT: usize = 100_000;

#[derive(Default)]
struct State {
    queues: HashMap<Work, Queue>,
    dead: Vec<Stored>,
    /// The outcome log's stream: bodies, oldest first, at most `EVENTS_KEPT`.
    events: std::collections::VecDeque<Vec<u8>>,
    delayed: HashMap<Work, usize>,
    next_tag: u64,
}

struct Shared {
    topology: Topology,
    state: Mutex<State>,
    changed: Notify,
}

/// A dead letter held by the in-process broker.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// `message_id`.
    pub message_id: String,
    /// Headers, including ours (`jst2kd-error-kind`, …) or the broker's `x-death`.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

/// The in-process broker; clones share the same queues.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl MemoryBroker {
    /// An empty broker with this topology.
    pub fn new(topology: Topology) -> Self {
        Self {
            shared: Arc::new(Shared {
                topology,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// The names it pretends to have.
    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state is still
        // consistent between statements, so keep going rather than poison every stage.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a message (it is "confirmed" when this returns).
    pub fn publish(&self, message: Outgoing) -> Result<(), QueueError> {
        super::check_size(&message, super::DEFAULT_FRAME_MAX)?;
        let stored = Stored {
            message_id: message.message_id,
            headers: message.headers,
            body: message.body,
            deliveries: 0,
        };
        match message.destination {
            Destination::Work(work) => {
                self.state()
                    .queues
                    .entry(work)
                    .or_default()
                    .ready
                    .push_back(stored);
                self.shared.changed.notify_waiters();
            }
            Destination::Dead => self.state().dead.push(stored),
            Destination::Events => {
                let mut state = self.state();
                state.events.push_back(stored.body);
                while state.events.len() > EVENTS_KEPT {
                    state.events.pop_front();
                }
            }
            Destination::Retry(work, tier) => {
                let delay = *self
                    .shared
                    .topology
                    .retry_delays
                    .get(tier)
                    .ok_or(QueueError::NoSuchTier(tier))?;
                *self.state().delayed.entry(work).or_default() += 1;
                let broker = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut state = broker.state();
                    *state.delayed.entry(work).or_default() -= 1;
                    state
                        .queues
                        .entry(work)
                        .or_default()
                        .ready
                        .push_back(stored);
                    drop(state);
                    broker.shared.changed.notify_waiters();
                });
            }
        }
        Ok(())
    }

    /// Starts a consumer.
    pub fn consume(&self, work: Work, prefetch: u16) -> MemoryConsumer {
        MemoryConsumer {
            broker: self.clone(),
            work,
            prefetch: usize::from(prefetch.max(1)),
            unsettled: Arc::new(AtomicUsize::new(0)),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Ready, unsettled and delayed messages of a work queue.
    pub fn depth(&self, work: Work) -> u64 {
        let state = self.state();
        let queued = state
            .queues
            .get(&work)
            .map_or(0, |q| q.ready.len() + q.unacked.len());
        (queued + state.delayed.get(&work).copied().unwrap_or(0)) as u64
    }

    /// The outcome log's events, oldest first (bodies).
    pub fn events(&self) -> Vec<Vec<u8>> {
        self.state().events.iter().cloned().collect()
    }

    /// Every dead letter so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state()
            .dead
            .iter()
            .map(|s| DeadLetter {
                message_id: s.message_id.clone(),
                headers: s.headers.clone(),
                body: s.body.clone(),
            })
            .collect()
    }

    fn settle(&self, work: Work, tag: u64, requeue: bool) {
        let mut state = self.state();
        let limit = self.shared.topology.delivery_limit;
        let dead_name = self.shared.topology.work_queue(work);
        let Some(queue) = state.queues.get_mut(&work) else {
            return;
        };
        let Some(message) = queue.unacked.remove(&tag) else {
            return;
        };
        if requeue {
            if message.deliveries > limit {
                let mut message = message;
                message.headers.insert(
                    header::X_DEATH.into(),
                    json!([{"reason": "delivery_limit", "queue": dead_name, "count": 1}]),
                );
                state.dead.push(message);
            } else {
                queue.ready.push_front(message);
            }
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

/// Settles one in-process delivery; dropping it unsettled requeues it.
pub struct MemoryAcker {
    broker: MemoryBroker,
    work: Work,
    tag: u64,
    unsettled: Arc<AtomicUsize>,
    done: bool,
}

impl MemoryAcker {
    pub(crate) fn ack(mut self) {
        self.finish(false);
    }

    pub(crate) fn requeue(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, requeue: bool) {
        if !self.done {
            self.done = true;
            self.unsettled.fetch_sub(1, Ordering::SeqCst);
            self.broker.settle(self.work, self.tag, requeue);
        }
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Receives from one in-process work queue.
pub struct MemoryConsumer {
    broker: MemoryBroker,
    work: Work,
    prefetch: usize,
    unsettled: Arc<AtomicUsize>,
    cancelled: Arc<AtomicBool>,
}

impl MemoryConsumer {
    /// The next delivery, waiting for one; `None` once cancelled. Cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let changed = self.broker.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.cancelled.load(Ordering::SeqCst) {
                return None;
            }
            if self.unsettled.load(Ordering::SeqCst) < self.prefetch
                && let Some(delivery) = self.take()
            {
                return Some(delivery);
            }
            changed.await;
        }
    }

    fn take(&self) -> Option<Delivery> {
        let mut state = self.broker.state();
        state.next_tag += 1;
        let tag = state.next_tag;
        let queue = state.queues.entry(self.work).or_default();
        let mut message = queue.ready.pop_front()?;
        let redelivered = message.deliveries > 0;
        message.deliveries += 1;
        queue.unacked.insert(tag, message.clone());
        self.unsettled.fetch_add(1, Ordering::SeqCst);
        Some(Delivery::new(
            Some(message.message_id),
            message.headers,
            message.body,
            redelivered,
            Acker::Memory(MemoryAcker {
                broker: self.broker.clone(),
                work: self.work,
                tag,
                unsettled: self.unsettled.clone(),
                done: false,
            }),
        ))
    }

    /// Stops delivering.
    pub fn cancel(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.broker.shared.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::AmqpConfig;
    use std::time::Duration;

    fn broker(limit: u32) -> MemoryBroker {
        let mut topology = Topology::from_config(&AmqpConfig::default());
        topology.delivery_limit = limit;
        topology.retry_delays = vec![Duration::from_secs(5)];
        MemoryBroker::new(topology)
    }

    fn msg(id: &str, destination: Destination) -> Outgoing {
        Outgoing {
            destination,
            message_id: id.into(),
            headers: Headers::new(),
            body: id.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn ack_removes_requeue_redelivers_and_drop_requeues() {
        let b = broker(5);
        b.publish(msg("a", Destination::Work(Work::Counts)))
            .expect("stored");
        let mut c = b.consume(Work::Counts, 10);
        let d = c.next().await.expect("delivery");
        assert!(!d.redelivered);
        d.requeue().await.expect("requeued");
        let d = c.next().await.expect("again");
        assert!(d.redelivered);
        drop(d);
        assert_eq!(b.depth(Work::Counts), 1);
        let d = c.next().await.expect("after drop");
        d.ack().await.expect("acked");
        assert_eq!(b.depth(Work::Counts), 0);
    }

    #[tokio::test]
    async fn prefetch_bounds_unsettled_deliveries() {
        let b = broker(5);
        for id in ["a", "b", "c"] {
            b.publish(msg(id, Destination::Work(Work::Bills)))
                .expect("stored");
        }
        let mut c = b.consume(Work::Bills, 2);
        let first = c.next().await.expect("1");
        let _second = c.next().await.expect("2");
        let third = tokio::time::timeout(Duration::from_millis(50), c.next()).await;
        assert!(third.is_err(), "a third delivery beyond prefetch");
        first.ack().await.expect("ack");
        assert!(c.next().await.is_some());
    }

    #[tokio::test]
    async fn the_delivery_limit_dead_letters_with_x_death() {
        let b = broker(1);
        b.publish(msg("a", Destination::Work(Work::Counts)))
            .expect("stored");
        let mut c = b.consume(Work::Counts, 1);
        c.next().await.expect("1").requeue().await.expect("r");
        c.next().await.expect("2").requeue().await.expect("r");
        assert_eq!(b.depth(Work::Counts), 0);
        let dead = b.dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].headers.contains_key(header::X_DEATH));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_tier_returns_the_message_after_its_delay() {
        let b = broker(5);
        b.publish(msg("a", Destination::Retry(Work::Bills, 0)))
            .expect("stored");
        assert!(
            b.publish(msg("b", Destination::Retry(Work::Bills, 3)))
                .is_err()
        );
        assert_eq!(b.depth(Work::Bills), 1);
        let mut c = b.consume(Work::Bills, 1);
        let early = tokio::time::timeout(Duration::from_secs(4), c.next()).await;
        assert!(early.is_err());
        let d = c.next().await.expect("after the delay");
        assert_eq!(d.message_id.as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn cancel_ends_the_stream() {
        let b = broker(5);
        let mut c = b.consume(Work::Counts, 1);
        c.cancel();
        assert!(c.next().await.is_none());
    }
}
