//! Settling one RabbitMQ delivery: ack, or nack with requeue.
//!
//! lapin answers `Ok(false)` when it did not send the ack (the channel was recovered or closed
//! meanwhile): the broker will redeliver, so for us it is a failure.
//!
//! A consumer's acks go through its channel's [`AckWindow`], which sends the acks that are due
//! together as one `basic.ack` with `multiple` set. On a quorum queue every ack frame is a
//! command of the queue's Raft log (written, replicated, applied), so one frame for many
//! deliveries is what the broker spends least on: in `jst2kd bench`'s plain two-hop relay,
//! acking 64 at a time instead of one by one raised the ceiling from about 5,500 to about
//! 8,900 messages/s on the same 2-core machine. No ack waits for another: a delivery is acked
//! as soon as it is settled, alone when a delivery before it is still being worked on, and
//! together with every settled one that arrived meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::{mpsc, oneshot};

use super::QueueError;

fn sent(result: Result<bool, lapin::Error>) -> Result<(), QueueError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(QueueError::Unavailable(
            "the channel of this delivery is gone; the broker will redeliver it".into(),
        )),
        Err(e) => Err(QueueError::Unavailable(e.to_string())),
    }
}

/// How long a settle waits for lapin to hand its frame to the connection. `basic.ack` and
/// `basic.nack` have no answer from the broker: lapin resolves them once the frame is written,
/// which a connection that died under them may never do (or one RabbitMQ stopped reading,
/// blocked by a resource alarm, for as long as the alarm lasts). Past this, the settle is
/// reported as failed (lapin may still send the frame later: then the broker forgets the
/// delivery after all; otherwise it redelivers it), the window is stuck: its later frames are
/// not waited for, and the consumer, which watches the window, closes the channel (so the
/// broker redelivers everything unacknowledged on it) and consumes again on a new one.
const FRAME_WAIT: Duration = Duration::from_secs(30);

/// Sends one ack or nack frame, at most [`FRAME_WAIT`]; after one frame that never left,
/// `stuck` answers every later one at once.
async fn frame(
    stuck: &mut bool,
    send: impl Future<Output = Result<bool, lapin::Error>>,
) -> Result<(), QueueError> {
    let never_left = || {
        QueueError::Unavailable(format!(
            "RabbitMQ's connection took no ack within {} s; the broker will redeliver",
            FRAME_WAIT.as_secs()
        ))
    };
    if *stuck {
        return Err(never_left());
    }
    match tokio::time::timeout(FRAME_WAIT, send).await {
        Ok(result) => sent(result),
        Err(_) => {
            *stuck = true;
            Err(never_left())
        }
    }
}

const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// Where the outcome of a settle goes: the caller waiting for it, if it still waits.
type Reply = Option<oneshot::Sender<Result<(), QueueError>>>;

enum Op {
    /// A delivery arrived (sent by the consumer before the delivery is handed out).
    Arrived(u64),
    Ack(u64, lapin::Acker, Reply),
    Requeue(u64, lapin::Acker, Reply),
}

/// The unsettled deliveries of one consumer channel (one incarnation of it: delivery tags
/// start again at 1 on a recovered channel, which gets a window of its own).
///
/// One task per window owns the deliveries and sends every frame, in the order the settles
/// were asked for, each after the one before it has left: a requeue is never overtaken by a
/// `multiple` ack that would cover it, and a caller that stops waiting (a dropped future, a
/// dropped `Delivery`) leaves nothing half done. The task takes every settle waiting for it
/// at once; a `multiple` ack is only ever sent for the run of acked deliveries at the head of
/// the window, so it never covers one still being worked on, and an acked delivery behind one
/// still at work is acked on its own at once. Each caller learns the outcome of the frame
/// that carried its ack.
pub(super) struct AckWindow {
    ops: mpsc::UnboundedSender<Op>,
    /// Set by the task when a frame did not leave within [`FRAME_WAIT`].
    stuck: Arc<AtomicBool>,
}

impl AckWindow {
    /// A window and its task, on the current runtime.
    pub(super) fn start() -> Self {
        let (ops, receiver) = mpsc::unbounded_channel();
        let stuck = Arc::new(AtomicBool::new(false));
        tokio::spawn(settle(receiver, stuck.clone()));
        Self { ops, stuck }
    }

    /// Whether a frame of this window did not leave in time: the channel's acks have stopped.
    pub(super) fn stuck(&self) -> Arc<AtomicBool> {
        self.stuck.clone()
    }

    /// Registers a delivery as it arrives, in the broker's order, before it is handed out.
    pub(super) fn arrived(&self, tag: u64) {
        self.ops.send(Op::Arrived(tag)).ok();
    }
}

/// The window's task: until every sender (the consumer's state and every acker) is gone.
async fn settle(mut ops: mpsc::UnboundedReceiver<Op>, flag: Arc<AtomicBool>) {
    // `None`: being worked on; `Some`: acked, the frame not sent yet.
    let mut open: BTreeMap<u64, Option<(lapin::Acker, Reply)>> = BTreeMap::new();
    let mut taken = Vec::new();
    // The tags acked in this round: after the head run, the ones left are behind a delivery
    // still at work (every acked one is sent by the end of its round).
    let mut acked = Vec::new();
    let mut stuck = false;
    while ops.recv_many(&mut taken, 1_024).await > 0 {
        for op in taken.drain(..) {
            match op {
                Op::Arrived(tag) => {
                    open.insert(tag, None);
                }
                Op::Ack(tag, acker, reply) => match open.get_mut(&tag) {
                    Some(slot) => {
                        *slot = Some((acker, reply));
                        acked.push(tag);
                    }
                    // Not registered (cannot happen): acked on its own.
                    None => answer(
                        reply,
                        frame(&mut stuck, acker.ack(BasicAckOptions::default())).await,
                    ),
                },
                Op::Requeue(tag, acker, reply) => {
                    open.remove(&tag);
                    answer(reply, frame(&mut stuck, acker.nack(REQUEUE)).await);
                }
            }
        }
        // The acked run at the head: one frame.
        let mut run = Vec::new();
        while let Some(entry) = open.first_entry() {
            if entry.get().is_none() {
                break;
            }
            if let Some(acked) = entry.remove() {
                run.push(acked);
            }
        }
        if let Some((last, _)) = run.last() {
            let multiple = run.len() > 1;
            let result = frame(&mut stuck, last.ack(BasicAckOptions { multiple })).await;
            for (_, reply) in run {
                answer(reply, result.clone());
            }
        }
        // Acked behind one still at work: each on its own, now (in tag order; the ones the
        // run took are gone).
        acked.sort_unstable();
        for tag in acked.drain(..) {
            if let Some(Some((acker, reply))) = open.remove(&tag) {
                let result = frame(&mut stuck, acker.ack(BasicAckOptions::default())).await;
                answer(reply, result);
            }
        }
        if stuck {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

fn answer(reply: Reply, result: Result<(), QueueError>) {
    if let Some(reply) = reply {
        reply.send(result).ok();
    }
}

/// The acker of one delivery.
pub struct RabbitAcker {
    acker: lapin::Acker,
    /// The consumer channel's window and the delivery's tag; `None` for a delivery fetched with
    /// `basic.get`, settled on its own.
    window: Option<(mpsc::UnboundedSender<Op>, u64)>,
}

impl RabbitAcker {
    /// A delivery of a consumer, registered in its channel's window.
    pub(super) fn windowed(acker: lapin::Acker, window: &AckWindow, tag: u64) -> Self {
        Self {
            acker,
            window: Some((window.ops.clone(), tag)),
        }
    }

    /// A delivery settled on its own.
    pub(super) fn single(acker: lapin::Acker) -> Self {
        Self {
            acker,
            window: None,
        }
    }

    /// Hands the settle to the window's task and waits for its frame.
    async fn through_window(
        ops: &mpsc::UnboundedSender<Op>,
        op: impl FnOnce(Reply) -> Op,
    ) -> Result<(), QueueError> {
        let (reply, outcome) = oneshot::channel();
        if ops.send(op(Some(reply))).is_err() {
            return Err(gone());
        }
        outcome.await.unwrap_or_else(|_| Err(gone()))
    }

    /// The broker forgets the delivery.
    pub async fn ack(self) -> Result<(), QueueError> {
        match self.window {
            Some((ops, tag)) => {
                Self::through_window(&ops, |reply| Op::Ack(tag, self.acker, reply)).await
            }
            None => frame(&mut false, self.acker.ack(BasicAckOptions::default())).await,
        }
    }

    /// The delivery goes back to its queue (counting toward the delivery limit).
    pub async fn requeue(self) -> Result<(), QueueError> {
        match self.window {
            Some((ops, tag)) => {
                Self::through_window(&ops, |reply| Op::Requeue(tag, self.acker, reply)).await
            }
            None => frame(&mut false, self.acker.nack(REQUEUE)).await,
        }
    }

    /// Requeues from a `Drop`, without waiting.
    pub fn requeue_detached(self) {
        match self.window {
            Some((ops, tag)) => {
                ops.send(Op::Requeue(tag, self.acker, None)).ok();
            }
            None => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        self.acker.nack(REQUEUE).await.ok();
                    });
                }
            }
        }
    }
}

fn gone() -> QueueError {
    QueueError::Unavailable(
        "the acks of this delivery's channel stopped (shutting down); the broker will redeliver it"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_never_leaves_is_given_up_and_the_next_ones_are_not_waited_for() {
        let mut stuck = false;
        let started = tokio::time::Instant::now();
        let first = frame(&mut stuck, std::future::pending()).await;
        assert!(
            matches!(first, Err(QueueError::Unavailable(_))),
            "{first:?}"
        );
        assert_eq!(started.elapsed(), FRAME_WAIT);
        assert!(stuck);
        // Stuck: answered at once, and the frame is not even started.
        let polled = std::sync::atomic::AtomicBool::new(false);
        let second = frame(&mut stuck, async {
            polled.store(true, Ordering::SeqCst);
            Ok(true)
        })
        .await;
        assert!(second.is_err());
        assert!(!polled.load(Ordering::SeqCst));
        assert_eq!(started.elapsed(), FRAME_WAIT);
        // A frame that leaves in time is sent; `false` from lapin means not sent.
        let mut fresh = false;
        assert!(frame(&mut fresh, async { Ok(true) }).await.is_ok());
        assert!(frame(&mut fresh, async { Ok(false) }).await.is_err());
        assert!(!fresh);
    }
}
