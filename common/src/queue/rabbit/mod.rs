//! RabbitMQ through lapin: the product's queue implementation.
//!
//! Two layers of recovery. lapin's own (`enable_auto_recover`) reconnects and replays channels,
//! declarations and consumers after a network error; a publish or delivery caught in the break
//! fails with a recoverable error, and [`lapin::Channel::wait_for_recovery`] waits it out. When
//! lapin gives up (the connection ends in error or closed), the supervisor here drops it and
//! builds a new connection, channels and consumers, with backoff, until shutdown.
//!
//! Invariants: a publish returns `Ok` only after the broker's positive confirm without a
//! `basic.return` (messages are `mandatory`); a message whose confirm was lost with the
//! connection is published again (at least once — every stage is idempotent); deliveries of a
//! channel that died are redelivered by the broker, never acked here on its behalf.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Acker, Delivery, Destination, Outgoing, QueueError, Topology, Work};

mod acker;
mod consumer;
mod control;
mod dead;
mod headers;
mod lock;
mod stream;
mod topology;

use crate::config::Secret;
use crate::messages::Headers;
pub use acker::RabbitAcker;
pub use consumer::RabbitConsumer;
pub use control::{ControlClient, ControlMessage, ControlServer, Replied};
pub use dead::{DeadLetterBatch, HeldDeadLetter};
pub use headers::{from_table, to_table};
pub use lock::{LockError, ProducerLock};
pub use stream::StreamReader;
use topology::declare;

/// The frame size a publishing-only connection asks for ([`RabbitBroker::connect_publisher`]):
/// lapin's buffers are then 2 MiB instead of 8 MiB, and our largest headers (a count
/// document's, under 1 KiB) fit with room to spare.
pub const PUBLISHER_FRAME_MAX: u32 = 32_768;

/// How many times a publish whose channel could not be recovered is tried on a new connection.
const PUBLISH_ROUNDS: usize = 6;

/// A supervised connection with a publishing channel in confirm mode.
#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// The nodes of `amqp.url`, in its order (one URL, or several of one cluster).
    nodes: Vec<Secret>,
    /// The node of the current (or last) connection.
    node: AtomicUsize,
    /// The node the next connection tries first: the one after a node whose connection was
    /// lost.
    next: AtomicUsize,
    name: String,
    /// The frame size asked for when `amqp.url` does not say (none: the broker's).
    frame_max: Option<u32>,
    topology: Topology,
    live: Mutex<Option<Live>>,
    /// The current connection and publishing channel, for readiness checks and publishes
    /// that must not wait for `live` (a tokio mutex: a hundred tasks publishing at once
    /// queued on it, each waking the next).
    current: std::sync::Mutex<Option<Live>>,
    generation: AtomicU64,
    cancel: CancellationToken,
    /// A failure retrying cannot fix (the topology changed under us); the process stops.
    fatal: std::sync::Mutex<Option<QueueError>>,
}

/// Whether `url` is an AMQP URL lapin can connect with (`amqp.url` is checked at start, so a
/// typo is a configuration error rather than endless reconnects).
pub fn is_valid_url(url: &str) -> bool {
    url.parse::<lapin::uri::AMQPUri>().is_ok()
}

/// The nodes an `amqp.url` names: one URL, or the full URLs of one cluster's nodes separated
/// by commas (`amqp://u:p@host1:5672/%2f,amqp://u:p@host2:5672/%2f`). Empty parts are left
/// out.
pub fn nodes(url: &str) -> Vec<&str> {
    // A comma splits only where the next URL starts: a password or a query may hold one.
    let mut starts: Vec<usize> = vec![0];
    for (i, _) in url.match_indices(',') {
        let rest = url[i + 1..].trim_start();
        if rest.starts_with("amqp://") || rest.starts_with("amqps://") || rest.is_empty() {
            starts.push(i + 1);
        }
    }
    starts.push(url.len() + 1);
    starts
        .windows(2)
        .map(|w| url[w[0]..w[1] - 1].trim())
        .filter(|u| !u.is_empty())
        .collect()
}

/// `host:port` of a node's URL, for messages (never the credentials); `?` when unreadable.
pub fn node_address(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "?".into(),
    }
}

/// The TLS settings of a connection from the files of `[amqp]`, read now (a renewed
/// certificate is used from the next connection on). The error names the key, never the
/// content.
fn tls_config(tls: &super::AmqpTls) -> Result<lapin::tcp::OwnedTLSConfig, String> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| format!("`{key}`: cannot read {}: {}", path.display(), e.kind()))
    };
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(
            String::from_utf8(read("amqp.ca_file", path)?)
                .map_err(|_| format!("`amqp.ca_file`: {} is not PEM text", path.display()))?,
        ),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("amqp.cert_file", cert)?,
            key: read("amqp.key_file", key)?,
        }),
        _ => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// A TLS handshake of our own with an `amqps://` node before lapin connects, with the same
/// trust (the system's roots and `amqp.ca_file`) and client certificate: lapin retries a
/// failed handshake on its own until the connect timeout, which would only say "timed out".
/// This says why: an unknown issuer, a plain amqp:// port (`InvalidContentType`), a name the
/// certificate does not cover.
async fn tls_probe(uri: &lapin::uri::AMQPUri, tls: &super::AmqpTls) -> Result<(), String> {
    tls_handshake(uri, tls).await.map(drop)
}

/// Why a node that completed our handshake then dropped lapin's connection, when it said so.
/// In TLS 1.3 the client's side of the handshake ends before the server has judged the
/// client's certificate: a node that wants one (`fail_if_no_peer_cert`) or distrusts it sends
/// its alert afterwards, and lapin, which has written the AMQP header by then, often sees the
/// connection reset before the alert. A second handshake that sends nothing reads the alert
/// (within 2 s); `None` when the node says nothing.
async fn tls_alert(uri: &lapin::uri::AMQPUri, tls: &super::AmqpTls) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut stream = tls_handshake(uri, tls).await.ok()?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await {
        Ok(Err(e)) => Some(format!("IO error: {e}")),
        _ => None,
    }
}

async fn tls_handshake(
    uri: &lapin::uri::AMQPUri,
    tls: &super::AmqpTls,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    crate::http::install_crypto_provider();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = &tls.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("`amqp.ca_file`: {}: {e}", path.display()))?
            .filter_map(Result::ok);
        roots.add_parsable_certificates(certs);
    }
    let builder = tokio_rustls::rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("`amqp.cert_file`: {}: {e}", cert.display()))?
                .filter_map(Result::ok)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                format!(
                    "`amqp.key_file`: {} holds no PEM private key",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = uri.authority.host.clone();
    let name = ServerName::try_from(host.clone())
        .map_err(|_| format!("{host} is not a name a certificate can hold"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), uri.authority.port))
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// Connects to one node with the TLS settings (an `amqps://` node is probed first).
async fn connect_node(
    uri: lapin::uri::AMQPUri,
    properties: ConnectionProperties,
    tls: &super::AmqpTls,
) -> Result<Connection, String> {
    if uri.scheme == lapin::uri::AMQPScheme::AMQPS {
        tls_probe(&uri, tls).await?;
    }
    let config = tls_config(tls)?;
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    let amqps = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
    let probe = amqps.then(|| uri.clone());
    match Connection::connect_uri_with_config(uri, properties, config, runtime).await {
        Ok(connection) => Ok(connection),
        Err(e) => match probe {
            Some(uri) => Err(match tls_alert(&uri, tls).await {
                Some(alert) => format!("{alert}; the connection: {e}"),
                None => e.to_string(),
            }),
            None => Err(e.to_string()),
        },
    }
}

/// A connection of its own (the producer lock, the control client) to the first node of
/// `url` that answers, each within [`CONNECT_TIMEOUT`]; the error names the last node tried
/// (`host:port`, never the credentials).
pub(super) async fn connect_first(
    url: &Secret,
    tls: &super::AmqpTls,
    properties: ConnectionProperties,
) -> Result<Connection, String> {
    let mut last = String::from("amqp.url names no node");
    for node in nodes(url.expose()) {
        // Parsed here, with a message of ours: lapin's parse error quotes the URL.
        let Ok(uri) = node.parse::<lapin::uri::AMQPUri>() else {
            last = "amqp.url is not a valid AMQP URL".into();
            continue;
        };
        let attempt = connect_node(uri, properties.clone(), tls);
        last = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(e)) => format!("{}: {e}", node_address(node)),
            Err(_) => format!(
                "{}: RabbitMQ did not complete the connection within {} s",
                node_address(node),
                CONNECT_TIMEOUT.as_secs()
            ),
        };
    }
    Err(last)
}

/// Whether lapin recovers a lost connection itself. With one node, yes: it reconnects to
/// the same node and replays channels, consumers and confirms (a restart of the broker is
/// waited out). With several, no: lapin's recovery knows one address only, and against a
/// node that is gone for good (seen with SIGKILL on RabbitMQ 3.10) its channels stayed
/// `Reconnecting` for minutes; the connection is instead dropped at once and the supervisor
/// ([`RabbitBroker::live`]) builds a new one on the next node of the list, where consumers
/// consume again and unconfirmed publishes are sent again.
fn lapin_recovers(nodes: usize) -> bool {
    nodes <= 1
}

/// How long opening a connection (TCP, TLS, AMQP handshake) may take: a TLS client talking
/// to a plain AMQP port otherwise waits for a handshake that never comes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    publisher: Channel,
    generation: u64,
}

impl Live {
    /// Not closed, closing or errored: still lapin's to recover if it must.
    fn usable(&self) -> bool {
        let status = self.connection.status();
        !(status.closed() || status.errored() || status.closing())
    }
}

impl RabbitBroker {
    /// Connects and declares the topology, retrying with backoff until it succeeds, `cancel`
    /// fires, or the broker refuses a declaration (a [`QueueError::TopologyMismatch`], which
    /// retrying cannot fix).
    pub async fn connect(
        url: Secret,
        connection_name: impl Into<String>,
        topology: Topology,
        cancel: CancellationToken,
    ) -> Result<Self, QueueError> {
        let broker = Self::new(url, connection_name.into(), topology, cancel, None);
        broker.live(true).await?;
        Ok(broker)
    }

    /// Like [`RabbitBroker::connect`], for a process that only publishes on this connection
    /// (the producer): it asks for frames of [`PUBLISHER_FRAME_MAX`] unless `amqp.url` sets
    /// `frame_max`. lapin keeps a receive and a send buffer of 32 frames per connection,
    /// 8 MiB at RabbitMQ's default 128 KiB frame, touched page by page as they are used; a
    /// connection that consumes nothing needs no large frame (bodies are split into frames;
    /// headers are checked against the frame size before publishing). Consumers keep the
    /// broker's frame size: a delivery's headers must fit in one frame, and a message with
    /// large headers put on a work queue by someone else would otherwise break the
    /// connection.
    pub async fn connect_publisher(
        url: Secret,
        connection_name: impl Into<String>,
        topology: Topology,
        cancel: CancellationToken,
    ) -> Result<Self, QueueError> {
        let broker = Self::new(
            url,
            connection_name.into(),
            topology,
            cancel,
            Some(PUBLISHER_FRAME_MAX),
        );
        broker.live(true).await?;
        Ok(broker)
    }

    fn new(
        url: Secret,
        name: String,
        topology: Topology,
        cancel: CancellationToken,
        frame_max: Option<u32>,
    ) -> Self {
        let nodes = nodes(url.expose())
            .into_iter()
            .map(|u| Secret::new(u.to_string()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                nodes,
                node: AtomicUsize::new(0),
                next: AtomicUsize::new(0),
                name,
                frame_max,
                topology,
                live: Mutex::new(None),
                current: std::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                cancel,
                fatal: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Like [`RabbitBroker::connect`], but one attempt: the error says why RabbitMQ refused
    /// (a closed port, wrong credentials, an unknown vhost) instead of retrying. For commands
    /// that report and exit (`jst2kd check`).
    pub async fn connect_once(
        url: Secret,
        connection_name: impl Into<String>,
        topology: Topology,
        cancel: CancellationToken,
    ) -> Result<Self, QueueError> {
        let broker = Self::new(url, connection_name.into(), topology, cancel, None);
        broker.live(false).await?;
        Ok(broker)
    }

    /// The names it declares.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The failure that stopped this broker for good, if any.
    pub fn fatal(&self) -> Option<QueueError> {
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// True while the current connection is up (not recovering, not broken).
    pub fn is_ready(&self) -> bool {
        self.current()
            .is_some_and(|connection| connection.status().connected())
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.current_live().map(|live| live.connection)
    }

    fn current_live(&self) -> Option<Live> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_current(&self, live: Option<Live>) {
        *self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
    }

    /// One attempt at a new connection when the current one is lost for good; nothing while
    /// it is up or lapin is recovering it.
    pub async fn reconnect(&self) -> Result<(), QueueError> {
        if self.current_live().is_some_and(|live| live.usable()) {
            return Ok(());
        }
        // Someone (a consumer, a publish) is building one already: not waited for.
        let Ok(guard) = self.inner.live.try_lock() else {
            return Err(QueueError::Unavailable("reconnecting".into()));
        };
        drop(guard);
        self.live(false).await.map(|_| ())
    }

    /// The current connection, or a new one when lapin's recovery gave up; with `retry`
    /// false, one attempt.
    async fn live(&self, retry: bool) -> Result<Live, QueueError> {
        // The common case, without the lock that building a connection takes.
        if let Some(live) = self.current_live().filter(Live::usable) {
            return Ok(live);
        }
        let mut guard = self.inner.live.lock().await;
        if let Some(live) = guard.as_ref() {
            if live.usable() {
                return Ok(live.clone());
            }
            let lost = self.inner.node.load(Ordering::SeqCst);
            warn!(connection = %self.inner.name, node = %self.node_address(lost), "RabbitMQ connection lost for good; building a new one.");
            self.after_loss();
            *guard = None;
        }
        // The first connection starts at the first node; after a loss, at the next one (its
        // node is likely what was lost), walking the list.
        let start = self.inner.next.load(Ordering::SeqCst);
        let mut delays =
            crate::backoff::jittered(Duration::from_millis(500), Duration::from_secs(10), None);
        loop {
            let opened = tokio::select! {
                () = self.inner.cancel.cancelled() => return Err(QueueError::Cancelled),
                r = self.open_any(start) => r,
            };
            match opened {
                Ok(live) => {
                    let node = self.node_address(self.inner.node.load(Ordering::SeqCst));
                    info!(connection = %self.inner.name, node = %node, "Connected to RabbitMQ, topology declared.");
                    self.set_current(Some(live.clone()));
                    *guard = Some(live.clone());
                    return Ok(live);
                }
                Err(err @ QueueError::TopologyMismatch { .. }) => {
                    // Re-declaring cannot succeed until someone migrates the queue: stop the
                    // process (exit 2) instead of retrying forever.
                    tracing::error!(connection = %self.inner.name, error = %err, "RabbitMQ refused the topology; stopping.");
                    *self
                        .inner
                        .fatal
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.clone());
                    self.inner.cancel.cancel();
                    return Err(err);
                }
                Err(err) if !retry => return Err(err),
                Err(err) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    warn!(connection = %self.inner.name, error = %err, retry_in_ms = delay.as_millis() as u64, "Cannot reach RabbitMQ; retrying.");
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return Err(QueueError::Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// `host:port` of node `index`.
    fn node_address(&self, index: usize) -> String {
        self.inner
            .nodes
            .get(index)
            .map(|url| node_address(url.expose()))
            .unwrap_or_else(|| "?".into())
    }

    /// Connects to the first node that answers, from `start` round the list. A refused
    /// topology stops the walk (every node of a cluster would refuse it).
    async fn open_any(&self, start: usize) -> Result<Live, QueueError> {
        let count = self.inner.nodes.len();
        let mut last = QueueError::Unavailable("amqp.url names no node".into());
        for step in 0..count {
            let index = (start + step) % count;
            // The handshake has its own timeout; declarations and channels are bounded here,
            // so a stalled node cannot hold the walk.
            let opened = tokio::time::timeout(2 * CONNECT_TIMEOUT, self.open(index))
                .await
                .unwrap_or_else(|_| {
                    Err(QueueError::Unavailable(format!(
                        "RabbitMQ did not open the channels and declarations within {} s",
                        2 * CONNECT_TIMEOUT.as_secs()
                    )))
                });
            match opened {
                Ok(live) => {
                    self.inner.node.store(index, Ordering::SeqCst);
                    return Ok(live);
                }
                Err(err @ (QueueError::TopologyMismatch { .. } | QueueError::Cancelled)) => {
                    return Err(err);
                }
                Err(err) => {
                    let node = self.node_address(index);
                    if count > 1 {
                        warn!(connection = %self.inner.name, node = %node, error = %err, "Cannot reach this RabbitMQ node; trying the next.");
                    }
                    // One line naming the node and the reason (a refused certificate, a plain
                    // port behind amqps://, wrong credentials).
                    last = match err {
                        QueueError::Unavailable(why) => {
                            QueueError::Unavailable(format!("{node}: {why}"))
                        }
                        other => other,
                    };
                }
            }
        }
        Err(last)
    }

    async fn open(&self, index: usize) -> Result<Live, QueueError> {
        let mut properties =
            ConnectionProperties::default().with_connection_name(self.inner.name.clone().into());
        if lapin_recovers(self.inner.nodes.len()) {
            properties = properties.enable_auto_recover();
        }
        let Some(url) = self.inner.nodes.get(index) else {
            return Err(QueueError::Unavailable("amqp.url names no node".into()));
        };
        let url = url.expose();
        // The parser's error may quote the URL, password and all: not shown.
        let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|_: String| {
            QueueError::Unavailable("amqp.url is not a valid AMQP URL".into())
        })?;
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = self.inner.frame_max;
        }
        let connection = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_node(uri, properties, &self.inner.topology.tls),
        )
        .await
        {
            Ok(connected) => connected.map_err(QueueError::Unavailable)?,
            Err(_) if url.starts_with("amqps://") => {
                return Err(QueueError::Unavailable(format!(
                    "no TLS handshake with RabbitMQ within {} s: check that amqp.url names a TLS port (5671 by default; 5672 speaks plain amqp://)",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Err(_) => {
                return Err(QueueError::Unavailable(format!(
                    "RabbitMQ did not complete the connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let declarer = connection.create_channel().await.map_err(unavailable)?;
        declare(&declarer, &self.inner.topology).await?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
            generation,
        })
    }

    /// A new channel on the current connection (connecting first when there is none).
    pub(super) async fn channel(&self) -> Result<Channel, QueueError> {
        Ok(self.channel_on().await?.0)
    }

    /// A new channel, with the connection it is on.
    pub(super) async fn channel_on(&self) -> Result<(Channel, Arc<Connection>), QueueError> {
        let live = self.live(true).await?;
        // Bounded: a connection RabbitMQ stopped reading (a resource alarm) or that died
        // unnoticed would keep the caller waiting as long as that lasts.
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, live.connection.create_channel())
            .await
            .map_err(|_| {
                QueueError::Unavailable(format!(
                    "RabbitMQ did not open a channel within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(unavailable)?;
        Ok((channel, live.connection))
    }

    /// Whether lapin recovers this broker's connections (one node) or the supervisor replaces
    /// them (several; see [`lapin_recovers`]).
    pub(super) fn lapin_recovers(&self) -> bool {
        lapin_recovers(self.inner.nodes.len())
    }

    /// The next connection starts at the node after the one just lost.
    fn after_loss(&self) {
        let lost = self.inner.node.load(Ordering::SeqCst);
        let count = self.inner.nodes.len().max(1);
        self.inner.next.store((lost + 1) % count, Ordering::SeqCst);
    }

    /// Drops a connection that failed beyond lapin's recovery, so the next call rebuilds it.
    async fn discard(&self, generation: u64) {
        let mut guard = self.inner.live.lock().await;
        if guard.as_ref().is_some_and(|l| l.generation == generation) {
            self.after_loss();
            *guard = None;
            self.set_current(None);
        }
    }

    /// Replaces the publishing channel of connection `generation` after the broker nacked a
    /// message on it, so that the caller's next attempt goes out on a new channel. Seen once
    /// in the cluster test after a node was killed: the producer's every publish to `counts`
    /// was nacked, poll after poll for minutes, on the same channel. RabbitMQ keeps its client
    /// state of each quorum queue a channel publishes to in that channel (`rabbit_fifo_client`:
    /// an enqueuer registered on the first publish, a `reject_publish` status that only the
    /// queue's leader lifts); a new channel registers afresh. The old channel is closed after
    /// once the confirms still on their way on it have arrived (at most [`CONNECT_TIMEOUT`]).
    /// Only the channel that was nacked is replaced (several nacks on it replace it once), and
    /// the new one is opened before the connection's lock is taken, within [`CONNECT_TIMEOUT`].
    async fn renew_publisher(&self, nacked: &Live) {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let channel = nacked.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        })
        .await;
        let Ok(Ok(channel)) = opened else {
            return;
        };
        let mut guard = self.inner.live.lock().await;
        let Some(live) = guard.as_mut().filter(|l| {
            l.generation == nacked.generation && l.publisher.id() == nacked.publisher.id()
        }) else {
            drop(guard);
            tokio::spawn(async move {
                let closing = channel.close(200, "not needed".into());
                tokio::time::timeout(CONNECT_TIMEOUT, closing).await.ok();
            });
            return;
        };
        let old = std::mem::replace(&mut live.publisher, channel);
        self.set_current(Some(live.clone()));
        drop(guard);
        warn!(connection = %self.inner.name, "RabbitMQ nacked a message; publishing on a new channel.");
        tokio::spawn(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, old.wait_for_confirms())
                .await
                .ok();
            let closing = old.close(200, "nacked".into());
            tokio::time::timeout(CONNECT_TIMEOUT, closing).await.ok();
        });
    }

    /// Whether `live`'s publishing channel is still the one in use (not retired by
    /// [`RabbitBroker::renew_publisher`]).
    fn publisher_current(&self, live: &Live) -> bool {
        self.current_live().is_some_and(|current| {
            current.generation == live.generation && current.publisher.id() == live.publisher.id()
        })
    }

    /// Publishes every message and returns once each is confirmed. Messages whose confirm was
    /// lost with the connection are sent again; a nack or a return is an error.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let mut pending = messages;
        let mut pauses = crate::backoff::jittered(
            Duration::from_millis(200),
            Duration::from_secs(10),
            Some(PUBLISH_ROUNDS),
        );
        while !pending.is_empty() {
            let live = self.live(true).await?;
            let mut confirms = Vec::with_capacity(pending.len());
            let mut failed: Vec<Outgoing> = Vec::new();
            let mut first_error = None;
            let frame_max = usize::try_from(live.connection.configuration().frame_max())
                .unwrap_or(super::DEFAULT_FRAME_MAX);
            for message in &pending {
                // Checked before anything is sent: an oversized frame makes the broker close
                // the connection, and sending it again after the reconnect would do the same.
                super::check_size(message, frame_max)?;
            }
            for message in pending {
                let (exchange, key) = route(&self.inner.topology, message.destination)?;
                let sent = live
                    .publisher
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &message.body,
                        properties(&message),
                    )
                    .await;
                match sent {
                    Ok(confirm) => confirms.push((message, confirm)),
                    Err(err) => {
                        first_error.get_or_insert(err);
                        failed.push(message);
                    }
                }
            }
            for (message, confirm) in confirms {
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => {}
                    Ok(Confirmation::Ack(Some(returned))) => {
                        return Err(QueueError::NotAccepted {
                            message_id: message.message_id,
                            reason: format!("unroutable ({})", returned.reply_text),
                        });
                    }
                    Ok(Confirmation::Nack(_)) => {
                        self.renew_publisher(&live).await;
                        return Err(QueueError::NotAccepted {
                            message_id: message.message_id,
                            reason: "nacked by the broker".into(),
                        });
                    }
                    Ok(Confirmation::NotRequested) => {
                        return Err(QueueError::Unavailable(
                            "the publishing channel is not in confirm mode".into(),
                        ));
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                        failed.push(message);
                    }
                }
            }
            if let Some(err) = first_error {
                warn!(connection = %self.inner.name, error = %err, unconfirmed = failed.len(), "Publish interrupted; sending the unconfirmed messages again.");
                let recovered = tokio::select! {
                    () = self.inner.cancel.cancelled() => Err(QueueError::Cancelled),
                    r = live.publisher.wait_for_recovery(err) => r.map_err(unavailable),
                };
                match recovered {
                    Err(QueueError::Cancelled) => return Err(QueueError::Cancelled),
                    Err(e) => {
                        // A channel retired after a nack fails the confirms still on it when
                        // it closes: sent again on its successor, the connection kept.
                        if self.publisher_current(&live) {
                            self.discard(live.generation).await;
                        }
                        // Not recoverable by lapin (e.g. a channel closed for a permission):
                        // try a new connection a few times, then let the caller decide.
                        let Some(pause) = pauses.next() else {
                            return Err(e);
                        };
                        tokio::select! {
                            () = self.inner.cancel.cancelled() => return Err(QueueError::Cancelled),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    Ok(()) => {}
                }
            }
            pending = failed;
        }
        Ok(())
    }

    /// Starts a consumer on its own channel.
    pub async fn consume(&self, work: Work, prefetch: u16) -> Result<RabbitConsumer, QueueError> {
        let mut consumer = RabbitConsumer {
            broker: self.clone(),
            work,
            prefetch: prefetch.max(1),
            tag: format!(
                "{}-{}-{}",
                self.inner.name,
                work.key(),
                rand::random::<u32>()
            ),
            state: None,
            cancelled: false,
        };
        consumer.start().await?;
        Ok(consumer)
    }

    /// Ready messages in a work queue (a passive declaration, on a channel of its own).
    pub async fn depth(&self, work: Work) -> Result<u64, QueueError> {
        self.depth_of(&self.inner.topology.work_queue(work)).await
    }

    /// Ready messages in the dead-letter queue.
    pub async fn dead_depth(&self) -> Result<u64, QueueError> {
        self.depth_of(&self.inner.topology.dead()).await
    }

    async fn depth_of(&self, name: &str) -> Result<u64, QueueError> {
        let channel = self.channel().await?;
        let queue = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        channel.close(200, "depth read".into()).await.ok();
        Ok(u64::from(queue.message_count()))
    }

    /// Deletes every queue and exchange of the topology (tests, demo clean-up).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        for queue in self.inner.topology.all_queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        for exchange in [self.inner.topology.exchange(), self.inner.topology.dead()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        channel.close(200, "deleted".into()).await.ok();
        Ok(())
    }

    /// Waits for outstanding confirms, then closes the connection.
    pub async fn close(&self) {
        let live = self.inner.live.lock().await.take();
        self.set_current(None);
        if let Some(live) = live {
            live.publisher.wait_for_confirms().await.ok();
            live.publisher.close(200, "shutdown".into()).await.ok();
            live.connection.close(200, "shutdown".into()).await.ok();
        }
    }
}

fn unavailable(err: lapin::Error) -> QueueError {
    QueueError::Unavailable(err.to_string())
}

/// Exchange and routing key of a destination.
fn route(topology: &Topology, destination: Destination) -> Result<(String, String), QueueError> {
    Ok(match destination {
        Destination::Work(work) => (topology.exchange(), work.key().to_string()),
        Destination::Retry(work, tier) => (
            String::new(),
            topology
                .retry_queue(work, tier)
                .ok_or(QueueError::NoSuchTier(tier))?,
        ),
        Destination::Dead => (topology.dead(), String::new()),
        Destination::Events => (String::new(), topology.events_stream()),
    })
}

fn properties(message: &Outgoing) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.message_id.clone().into())
        .with_headers(to_table(&message.headers))
}
