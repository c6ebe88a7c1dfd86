#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Reading the dead-letter queue keeps its content and its order.

use common::config::Secret;

use common::messages::Headers;
use common::queue::AmqpConfig;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Destination, Outgoing, Topology};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn reading_dead_letters_twice_gives_the_same_order() {
    let amqp = AmqpConfig {
        prefix: format!("jst2kdtest-order-{}", std::process::id()),
        ..AmqpConfig::default()
    };
    let rabbit = RabbitBroker::connect(
        Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "order",
        Topology::from_config(&amqp),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let broker = Broker::Rabbit(rabbit.clone());
    for i in 0..10 {
        broker
            .publish(Outgoing {
                destination: Destination::Dead,
                message_id: format!("m{i}"),
                headers: Headers::new(),
                body: b"{}".to_vec(),
            })
            .await
            .unwrap();
    }
    let mut orders = Vec::new();
    for _ in 0..3 {
        let batch = rabbit.read_dead_letters().await.unwrap();
        orders.push(
            batch
                .letters
                .iter()
                .map(|l| l.message_id.clone())
                .collect::<Vec<_>>(),
        );
        batch.close().await;
    }
    rabbit.delete_topology().await.unwrap();
    rabbit.close().await;
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(orders, vec![expected.clone(), expected.clone(), expected]);
}
