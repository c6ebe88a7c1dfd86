#![allow(clippy::expect_used, clippy::unwrap_used)]

//! The RabbitMQ adapter against the real broker on 127.0.0.1:5672 (guest/guest).
//!
//! Each test uses its own prefix (`jst2kdtest-…`) and deletes its queues afterwards; recovery is
//! tested by closing only the test's own named connection with `rabbitmqctl close_connection`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::config::Secret;

use common::messages::Headers;
use common::queue::AmqpConfig;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Destination, Outgoing, QueueError, Topology, Work};
use tokio_util::sync::CancellationToken;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5";

fn topology(test: &str) -> Topology {
    let mut t = Topology::from_config(&AmqpConfig::default());
    t.prefix = format!("jst2kdtest-{test}-{}", std::process::id());
    t.retry_delays = vec![Duration::from_secs(1), Duration::from_secs(2)];
    t
}

async fn connect(topology: Topology, name: &str) -> Result<RabbitBroker, QueueError> {
    RabbitBroker::connect(Secret::new(URL), name, topology, CancellationToken::new()).await
}

fn message(destination: Destination, id: &str) -> Outgoing {
    let mut headers = Headers::new();
    headers.insert("jst2kd-schema".into(), "jst.count.v1".into());
    headers.insert("jst2kd-attempt".into(), 2.into());
    Outgoing {
        destination,
        message_id: id.into(),
        headers,
        body: format!("{{\"id\":\"{id}\"}}").into_bytes(),
    }
}

#[tokio::test]
async fn topology_is_declared_idempotently_and_messages_round_trip() {
    let t = topology("declare");
    let first = connect(t.clone(), "declare-1")
        .await
        .expect("first declaration");
    let second = connect(t.clone(), "declare-2")
        .await
        .expect("second declaration is a no-op");
    let broker = Broker::Rabbit(second.clone());
    broker
        .publish(message(Destination::Work(Work::Counts), "m1"))
        .await
        .expect("confirmed");
    let mut consumer = broker.consume(Work::Counts, 10).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("in time")
        .expect("a delivery");
    assert_eq!(d.message_id.as_deref(), Some("m1"));
    assert_eq!(
        d.headers.get("jst2kd-schema").and_then(|v| v.as_str()),
        Some("jst.count.v1")
    );
    assert_eq!(
        d.headers.get("jst2kd-attempt").and_then(|v| v.as_i64()),
        Some(2)
    );
    d.ack().await.expect("ack");
    consumer.cancel().await;
    first.delete_topology().await.expect("deleted");
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_changed_queue_argument_is_a_topology_mismatch() {
    let t = topology("mismatch");
    let broker = connect(t.clone(), "mismatch-1").await.expect("declared");
    let mut changed = t.clone();
    changed.delivery_limit += 1;
    match connect(changed, "mismatch-2").await {
        Err(QueueError::TopologyMismatch { queue, .. }) => {
            assert!(queue.ends_with(".counts"), "{queue}");
        }
        Err(other) => panic!("expected a topology mismatch, got {other}"),
        Ok(_) => panic!("expected a topology mismatch, got a connection"),
    }
    broker.delete_topology().await.expect("deleted");
    broker.close().await;
}

#[tokio::test]
async fn an_unroutable_publish_is_an_error() {
    let t = topology("unroutable");
    let broker = connect(t.clone(), "unroutable").await.expect("declared");
    let status = Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", &t.work_queue(Work::Bills)])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success());
    let result = Broker::Rabbit(broker.clone())
        .publish(message(Destination::Work(Work::Bills), "lost?"))
        .await;
    assert!(
        matches!(result, Err(QueueError::NotAccepted { .. })),
        "{result:?}"
    );
    broker.delete_topology().await.expect("deleted");
    broker.close().await;
}

#[tokio::test]
async fn a_retry_tier_returns_the_message_to_its_work_queue() {
    let t = topology("retry");
    let rabbit = connect(t.clone(), "retry").await.expect("declared");
    let broker = Broker::Rabbit(rabbit.clone());
    broker
        .publish(message(Destination::Retry(Work::Bills, 0), "r1"))
        .await
        .expect("confirmed");
    let mut consumer = broker.consume(Work::Bills, 1).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("back after the tier's TTL")
        .expect("a delivery");
    assert_eq!(d.message_id.as_deref(), Some("r1"));
    assert_eq!(
        d.headers.get("jst2kd-attempt").and_then(|v| v.as_i64()),
        Some(2)
    );
    assert!(
        d.headers.contains_key("x-death"),
        "the broker records the expiry"
    );
    d.ack().await.expect("ack");
    consumer.cancel().await;
    rabbit.delete_topology().await.expect("deleted");
    rabbit.close().await;
}

/// Finds the broker's pid for our named connection.
fn connection_pids(name: &str) -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(name))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn publishing_and_consuming_resume_after_the_connection_is_cut() {
    let t = topology("recover");
    let name = format!("jst2kdtest-recover-{}", std::process::id());
    let rabbit = connect(t.clone(), &name).await.expect("declared");
    let broker = Broker::Rabbit(rabbit.clone());
    let mut consumer = broker.consume(Work::Counts, 20).await.expect("consume");

    let received = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        while seen.len() < 100 && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(Some(d)) => {
                    if let Some(id) = d.message_id.clone() {
                        // A delivery caught in the cut may fail to ack: it comes again.
                        if d.ack().await.is_ok() {
                            seen.insert(id);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        consumer.cancel().await;
        seen
    });

    for i in 0..100 {
        if i == 50 {
            let pids = connection_pids(&name);
            assert!(!pids.is_empty(), "our connection is listed");
            for pid in pids {
                let status = Command::new("rabbitmqctl")
                    .args(["-q", "close_connection", &pid, "jst2kd recovery test"])
                    .status()
                    .expect("rabbitmqctl runs");
                assert!(status.success());
            }
        }
        tokio::time::timeout(
            Duration::from_secs(60),
            broker.publish(message(
                Destination::Work(Work::Counts),
                &format!("m{i:03}"),
            )),
        )
        .await
        .expect("publish resumes in time")
        .expect("every publish is confirmed in the end");
    }
    let seen = received.await.expect("consumer task");
    let expected: BTreeSet<String> = (0..100).map(|i| format!("m{i:03}")).collect();
    assert_eq!(seen, expected, "nothing lost");
    rabbit.delete_topology().await.expect("deleted");
    rabbit.close().await;
}

/// Issue 19, point 1: the outcome log is a stream, written in batches through the recording
/// handle, read back from a point in time in the order written, and left in place by reading.
#[tokio::test]
async fn the_outcome_log_records_into_a_stream_that_reads_back_in_order() {
    use common::outcomes::{self, Outcome, OutcomeKind, OutcomeLog};
    use common::telemetry::Stage;

    let t = topology("outcomes");
    let broker = connect(t.clone(), "outcomes").await.expect("declared");
    let stream = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type", "arguments"])
        .output()
        .expect("rabbitmqctl runs");
    let listed = String::from_utf8_lossy(&stream.stdout);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{}\t", t.events_stream())))
        .unwrap_or_else(|| panic!("{} declared:\n{listed}", t.events_stream()));
    assert!(line.contains("stream"), "{line}");
    assert!(line.contains("2592000s"), "30 days by default: {line}");

    let dropped = prometheus::IntCounter::new("dropped", "d").unwrap();
    let log = OutcomeLog::new(dropped.clone());
    log.attach(Broker::Rabbit(broker.clone()));
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    for io_id in 0..1_200 {
        log.record(
            Outcome::new(Stage::Producer, OutcomeKind::Published)
                .of_version(&format!("{io_id}@2026-01-01 00:00:00")),
        );
    }
    log.record(
        Outcome::new(Stage::Loader, OutcomeKind::Booked)
            .of_document(Some(7))
            .of_bill(Some("JSTPD7"))
            .with("result", "created"),
    );
    log.close().await;
    assert_eq!(dropped.get(), 0);

    let all = outcomes::read(&Broker::Rabbit(broker.clone()), since, |_| true)
        .await
        .expect("read");
    assert_eq!(all.len(), 1_201);
    let published: Vec<i64> = all
        .iter()
        .filter(|o| o.event == OutcomeKind::Published)
        .filter_map(|o| o.io_id)
        .collect();
    assert_eq!(published, (0..1_200).collect::<Vec<_>>(), "in order");
    let seven = outcomes::read(&Broker::Rabbit(broker.clone()), since, |o| {
        o.io_id == Some(7)
    })
    .await
    .expect("read again: a stream is not consumed");
    assert_eq!(seven.len(), 2, "{seven:?}");
    assert_eq!(seven[1].bill_no.as_deref(), Some("JSTPD7"));
    assert_eq!(seven[1].details["result"], "created");
    let later = outcomes::read(
        &Broker::Rabbit(broker.clone()),
        chrono::Utc::now() + chrono::Duration::seconds(5),
        |_| true,
    )
    .await
    .expect("read from the future");
    assert!(later.is_empty());
    broker.delete_topology().await.expect("deleted");
    broker.close().await;
}

#[tokio::test]
async fn a_publishing_connection_uses_small_frames_and_still_sends_large_bodies() {
    let t = topology("frames");
    let publisher = RabbitBroker::connect_publisher(
        Secret::new(URL),
        "frames-publisher",
        t.clone(),
        CancellationToken::new(),
    )
    .await
    .expect("connect");
    let consumer = connect(t.clone(), "frames-consumer")
        .await
        .expect("connect");
    // A body of many frames.
    let mut large = message(Destination::Work(Work::Counts), "large");
    large.body = format!("{{\"x\":\"{}\"}}", "y".repeat(300_000)).into_bytes();
    let sent = large.body.clone();
    Broker::Rabbit(publisher.clone())
        .publish(large)
        .await
        .expect("confirmed");
    let mut deliveries = Broker::Rabbit(consumer.clone())
        .consume(Work::Counts, 10)
        .await
        .expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .expect("delivered")
        .expect("a delivery");
    assert_eq!(d.body, sent);
    d.ack().await.expect("ack");
    // Headers that cannot fit its frame are refused before anything is sent, by name.
    let mut crowded = message(Destination::Work(Work::Counts), "crowded");
    crowded
        .headers
        .insert("x-big".into(), "z".repeat(40_000).into());
    let refused = Broker::Rabbit(publisher.clone()).publish(crowded).await;
    assert!(
        matches!(&refused, Err(QueueError::TooLarge { what, .. }) if what.contains("32768")),
        "{refused:?}"
    );
    // The connection is still good.
    Broker::Rabbit(publisher.clone())
        .publish(message(Destination::Work(Work::Counts), "after"))
        .await
        .expect("confirmed after the refusal");
    consumer.delete_topology().await.expect("clean up");
    publisher.close().await;
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_sent_together_never_cover_a_delivery_still_at_work_or_requeued() {
    let t = topology("acks");
    let broker = connect(t.clone(), "acks").await.expect("connect");
    let broker = Broker::Rabbit(broker);
    let ids: Vec<String> = (0..120).map(|i| format!("m{i:03}")).collect();
    broker
        .publish_all(
            ids.iter()
                .map(|id| message(Destination::Work(Work::Counts), id))
                .collect(),
        )
        .await
        .expect("confirmed");
    let mut consumer = broker.consume(Work::Counts, 200).await.expect("consume");
    let mut deliveries = Vec::new();
    while deliveries.len() < ids.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("in time")
            .expect("a delivery");
        deliveries.push(d);
    }
    // Settled in no particular order, concurrently: every seventh requeued, a few dropped
    // unsettled (requeued by their `Drop`), a few acked by a caller that stops waiting at once,
    // a few held back (still at work) while the ones after them are acked, the rest acked.
    let requeued = |i: usize| i.is_multiple_of(7) || i % 5 == 1;
    let mut settles = tokio::task::JoinSet::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let pause = Duration::from_millis(match i {
            _ if i % 11 == 0 => 300,
            _ => (i as u64 * 37) % 13,
        });
        settles.spawn(async move {
            tokio::time::sleep(pause).await;
            if i.is_multiple_of(7) {
                d.requeue().await
            } else if i % 5 == 1 {
                drop(d);
                Ok(())
            } else if i % 5 == 2 {
                // Polled once, then dropped: the ack still goes out.
                tokio::time::timeout(Duration::ZERO, d.ack()).await.ok();
                Ok(())
            } else {
                d.ack().await
            }
        });
    }
    while let Some(settled) = settles.join_next().await {
        settled.expect("joined").expect("settled");
    }
    // Exactly the requeued ones come again.
    let mut again = BTreeSet::new();
    let wanted: BTreeSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| requeued(*i))
        .map(|(_, id)| id.clone())
        .collect();
    while again.len() < wanted.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the requeued come again")
            .expect("a delivery");
        assert!(d.redelivered);
        again.insert(d.message_id.clone().expect("an id"));
        d.ack().await.expect("ack");
    }
    assert_eq!(again, wanted);
    let extra = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(extra.is_err(), "nothing else comes: {extra:?}");
    // Every ack reached the broker: with the channel closed, nothing goes back to the queue.
    consumer.cancel().await;
    drop(consumer);
    broker.close().await;
    let checker = connect(t.clone(), "acks-check").await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let depth = Broker::Rabbit(checker.clone())
            .depth(Work::Counts)
            .await
            .expect("depth");
        assert_eq!(depth, 0, "an ack was never sent");
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    checker.delete_topology().await.expect("clean up");
    checker.close().await;
}
