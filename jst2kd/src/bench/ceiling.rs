//! The broker's own ceiling: a plain two-hop RabbitMQ pipeline with lapin, built the way the
//! workers use the broker and nothing else. A publisher sends persistent 1.5 KB messages to a
//! quorum queue with confirms (at most [`CONFIRMS_IN_FLIGHT`] unconfirmed); a relay consumes
//! them (prefetch [`PREFETCH`]), publishes each to a second quorum queue with a confirm and
//! acks it after that confirm; a sink consumes the second queue and acks. Each on a
//! connection of its own. Its messages per second are what the pipeline is compared with.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// Bytes of each message: about a count document as JSON.
pub const MESSAGE_BYTES: usize = 1_536;
/// Unconfirmed publishes the publisher allows itself.
pub const CONFIRMS_IN_FLIGHT: usize = 1_000;
/// Unacked deliveries per consumer.
pub const PREFETCH: u16 = 200;

/// What one ceiling run measured.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Messages through both hops.
    pub messages: u64,
    /// From the first publish to the last message at the sink.
    pub elapsed: Duration,
}

impl Ceiling {
    /// Messages per second through both hops.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, properties),
    )
    .await
    .context("RabbitMQ did not answer within 10 s")?
    .context("cannot connect to RabbitMQ")
}

async fn publisher(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

async fn consumer(
    connection: &Connection,
    queue: &str,
    tag: &str,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Runs the two hops over `messages` messages under `{prefix}.ceiling.*` (deleted after),
/// calling `progress` with the messages at the sink now and then.
pub async fn run(
    url: &str,
    prefix: &str,
    messages: u64,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Ceiling> {
    let hops = [format!("{prefix}.ceiling.1"), format!("{prefix}.ceiling.2")];
    let setup = connect(url, "jst2kd-bench-ceiling").await?;
    let declarer = setup.create_channel().await?;
    let declared = declare(&declarer, &hops).await;
    let measured = match declared {
        Ok(()) => measure(url, &hops, messages, &mut progress).await,
        Err(e) => Err(e),
    };
    // Both, whatever failed: a queue declared before a failure is deleted too.
    for queue in &hops {
        let delete = declarer.queue_delete(queue.as_str().into(), QueueDeleteOptions::default());
        tokio::time::timeout(Duration::from_secs(10), delete)
            .await
            .ok();
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        setup.close(200, "bench done".into()),
    )
    .await
    .ok();
    measured
}

async fn declare(declarer: &Channel, hops: &[String; 2]) -> anyhow::Result<()> {
    for queue in hops {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        declarer
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .with_context(|| format!("cannot declare {queue}"))?;
    }
    Ok(())
}

async fn measure(
    url: &str,
    hops: &[String; 2],
    messages: u64,
    progress: &mut impl FnMut(u64),
) -> anyhow::Result<Ceiling> {
    let (relay_conn, sink_conn, pub_conn) = (
        connect(url, "jst2kd-bench-relay").await?,
        connect(url, "jst2kd-bench-sink").await?,
        connect(url, "jst2kd-bench-publisher").await?,
    );
    let measured = hops_through(&relay_conn, &sink_conn, &pub_conn, hops, messages, progress).await;
    for c in [relay_conn, sink_conn, pub_conn] {
        tokio::time::timeout(Duration::from_secs(5), c.close(200, "bench done".into()))
            .await
            .ok();
    }
    measured
}

async fn hops_through(
    relay_conn: &Connection,
    sink_conn: &Connection,
    pub_conn: &Connection,
    hops: &[String; 2],
    messages: u64,
    progress: &mut impl FnMut(u64),
) -> anyhow::Result<Ceiling> {
    let (_sink_channel, mut sink) = consumer(sink_conn, &hops[1], "sink").await?;
    let (_relay_in, mut relay_deliveries) = consumer(relay_conn, &hops[0], "relay").await?;
    let relay_out = publisher(relay_conn).await?;
    let publish_channel = publisher(pub_conn).await?;
    let second = hops[1].clone();
    // The helpers run as tasks; any that fails ends the run with its error.
    let mut helpers = tokio::task::JoinSet::new();
    // The relay: publish to the second hop, ack the delivery once that publish is confirmed,
    // confirms awaited in order by a task of their own so that deliveries keep flowing.
    let (to_ack, mut acks) = tokio::sync::mpsc::channel::<(lapin::PublisherConfirm, lapin::Acker)>(
        usize::from(PREFETCH),
    );
    helpers.spawn(async move {
        while let Some(delivery) = relay_deliveries.next().await {
            let delivery = delivery.context("the relay lost its consumer")?;
            let confirm = relay_out
                .basic_publish(
                    "".into(),
                    second.as_str().into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    persistent(),
                )
                .await
                .context("the relay cannot publish")?;
            if to_ack.send((confirm, delivery.acker)).await.is_err() {
                break;
            }
        }
        // Ends with the run.
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    helpers.spawn(async move {
        while let Some((confirm, acker)) = acks.recv().await {
            confirm
                .await
                .context("the relay's publish was not confirmed")?;
            acker
                .ack(BasicAckOptions::default())
                .await
                .context("the relay cannot ack")?;
        }
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    let first = hops[0].clone();
    helpers.spawn(async move {
        let body = vec![b'x'; MESSAGE_BYTES];
        let mut in_flight: VecDeque<lapin::PublisherConfirm> =
            VecDeque::with_capacity(CONFIRMS_IN_FLIGHT);
        for _ in 0..messages {
            if in_flight.len() >= CONFIRMS_IN_FLIGHT
                && let Some(oldest) = in_flight.pop_front()
            {
                oldest.await.context("a publish was not confirmed")?;
            }
            let confirm = publish_channel
                .basic_publish(
                    "".into(),
                    first.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(),
                )
                .await
                .context("cannot publish")?;
            in_flight.push_back(confirm);
        }
        for confirm in in_flight {
            confirm.await.context("a publish was not confirmed")?;
        }
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    let started = Instant::now();
    let mut received = 0;
    let mut last_report = Instant::now();
    while received < messages {
        let next = tokio::select! {
            failed = helpers.join_next() => {
                return match failed {
                    Some(Ok(Err(e))) => Err(e),
                    _ => Err(anyhow::anyhow!("a task of the ceiling run stopped")),
                };
            }
            next = tokio::time::timeout(Duration::from_secs(30), sink.next()) => next,
        };
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(e).context("the ceiling's sink lost its consumer"),
            Ok(None) => anyhow::bail!("the ceiling's sink stopped"),
            Err(_) => anyhow::bail!(
                "no message reached the ceiling's sink for 30 s ({received} of {messages} did)"
            ),
        };
        delivery.acker.ack(BasicAckOptions::default()).await?;
        received += 1;
        if last_report.elapsed() > Duration::from_millis(500) {
            progress(received);
            last_report = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    progress(received);
    helpers.abort_all();
    Ok(Ceiling { messages, elapsed })
}
