//! The producer's lock: an exclusive queue on a connection of its own, without recovery.

use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

use super::*;

/// Why the producer lock was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// Another producer holds it (`RESOURCE_LOCKED`).
    #[error("another producer holds the lock")]
    Held,
    /// The broker could not be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The producer's lock: an exclusive queue declared on a connection of its own, **without**
/// automatic recovery. lapin's recovery would re-declare the queue on a new connection — and
/// either fail the other channels' recovery or silently re-take a lock another producer took
/// meanwhile. When this connection drops, the lock is gone: the holder must stop polling
/// before it tries again.
pub struct ProducerLock {
    connection: Arc<Connection>,
    _channel: Channel,
}

impl ProducerLock {
    /// Tries once to take the lock queue `queue`.
    pub async fn acquire(
        url: &Secret,
        connection_name: &str,
        topology: &Topology,
    ) -> Result<Self, LockError> {
        let queue = topology.lock_queue();
        let queue = queue.as_str();
        let properties = ConnectionProperties::default()
            .with_connection_name(connection_name.to_string().into());
        // Any node of the cluster will do: the queue lives on the node of this connection,
        // and is lost with it (another producer may then take over).
        let connection = connect_first(url, &topology.tls, properties)
            .await
            .map_err(LockError::Unavailable)?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => Ok(Self {
                connection: Arc::new(connection),
                _channel: channel,
            }),
            Err(err) => {
                connection.close(200, "lock not taken".into()).await.ok();
                match err.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405 => {
                        Err(LockError::Held)
                    }
                    _ => Err(LockError::Unavailable(err.to_string())),
                }
            }
        }
    }

    /// True while the lock's connection is up.
    pub fn is_held(&self) -> bool {
        self.connection.status().connected()
    }

    /// Resolves once the lock is lost (its connection closed or failed).
    pub async fn lost(&self) {
        while self.is_held() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The control queue `queue`, read by this lock's holder on a channel of the lock's
    /// connection: a request it took goes back to the queue when the lock is lost.
    pub async fn control(&self, queue: String) -> Result<ControlServer, QueueError> {
        ControlServer::open(self.connection.clone(), queue).await
    }

    /// Gives the lock up.
    pub async fn release(self) {
        self.connection
            .close(200, "producer stopping".into())
            .await
            .ok();
    }
}
