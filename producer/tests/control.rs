#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Backfill requests on the control queue of the real RabbitMQ, served by the lock holder
//! window by window (documents go to the in-process queue): progress put back after every
//! window, a requester that went away, a holder that stopped in a window, a window that fails.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use common::config::{Dur, Secret};
use common::queue::memory::MemoryBroker;
use common::queue::rabbit::{ControlClient, ControlServer, ProducerLock, Replied};
use common::queue::{AmqpConfig, Broker, Topology, Work};
use common::telemetry::{Metrics, Stage};
use jst::{JstClient, JstConfig};
use producer::control::{BackfillRequest, Event, Progress};
use producer::{Producer, ProducerConfig};
use serde_json::Value;
use sim::jst::{JstCredentials, JstSim};
use tokio_util::sync::CancellationToken;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5";

struct Setup {
    prefix: String,
    topology: Topology,
    docs: Vec<Value>,
    jst_url: String,
    documents: MemoryBroker,
}

impl Setup {
    async fn new(test: &str) -> Self {
        let docs = sim::jst::generate(120, 7);
        let sim = JstSim::new(JstCredentials::default(), docs.clone());
        let jst_url = sim::spawn_local(sim.router(), CancellationToken::new())
            .await
            .expect("sim");
        let prefix = format!("jst2kdtest-control-{test}-{}", std::process::id());
        let topology = Topology::from_config(&AmqpConfig {
            prefix: prefix.clone(),
            ..AmqpConfig::default()
        });
        Self {
            documents: MemoryBroker::new(topology.clone()),
            prefix,
            topology,
            docs,
            jst_url,
        }
    }

    fn producer(&self, app_secret: &str) -> Producer {
        let c = JstCredentials::default();
        let jst = JstConfig {
            base_url: self.jst_url.clone(),
            app_key: Secret::new(c.app_key),
            app_secret: Secret::new(app_secret),
            access_token: Secret::new(c.access_token),
            rate_per_second: 0,
            rate_per_minute: 0,
            ..JstConfig::default()
        };
        Producer::new(
            JstClient::new(&jst, None).expect("client"),
            Broker::Memory(self.documents.clone()),
            ProducerConfig {
                lag: Dur::secs(0),
                ..ProducerConfig::default()
            },
            Metrics::new(&[Stage::Producer]),
        )
    }

    /// Takes the lock; a lock just released is freed by the broker a moment later.
    async fn lock(&self) -> (ProducerLock, ControlServer) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let lock = loop {
            match ProducerLock::acquire(
                &Secret::new(URL),
                &format!("{}-lock", self.prefix),
                &self.topology,
            )
            .await
            {
                Ok(lock) => break lock,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("lock: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let server = lock
            .control(self.topology.control_queue())
            .await
            .expect("control");
        (lock, server)
    }

    async fn requester(&self) -> ControlClient {
        ControlClient::connect(
            &Secret::new(URL),
            &format!("{}-requester", self.prefix),
            &self.topology,
        )
        .await
        .expect("requester")
    }

    /// The Confirmed and Archive documents modified in `[from, to]`.
    fn wanted(&self, from: DateTime<FixedOffset>, to: DateTime<FixedOffset>) -> BTreeSet<String> {
        self.docs
            .iter()
            .filter(|d| d["status"] == "Confirmed" || d["status"] == "Archive")
            .filter(|d| {
                let m = common::time::parse_beijing(d["modified"].as_str().unwrap()).unwrap();
                m >= from && m <= to
            })
            .map(|d| format!("{}@{}", d["io_id"], d["modified"].as_str().unwrap()))
            .collect()
    }

    async fn published(&self) -> Vec<String> {
        let mut consumer = Broker::Memory(self.documents.clone())
            .consume(Work::Counts, 10_000)
            .await
            .expect("consume");
        let mut ids = Vec::new();
        while let Ok(Some(d)) =
            tokio::time::timeout(Duration::from_millis(100), consumer.next()).await
        {
            ids.push(d.message_id.clone().unwrap_or_default());
            d.ack().await.expect("ack");
        }
        ids
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        e2e::delete_queues(&self.prefix);
    }
}

async fn reply(client: &mut ControlClient) -> Progress {
    let body = tokio::time::timeout(Duration::from_secs(10), client.next_reply())
        .await
        .expect("a reply in time")
        .expect("connected");
    serde_json::from_slice(&body).expect("a progress reply")
}

fn period() -> (DateTime<FixedOffset>, DateTime<FixedOffset>) {
    let now = common::time::now_beijing();
    (
        now - chrono::Duration::days(20),
        now - chrono::Duration::days(2),
    )
}

#[tokio::test]
async fn a_request_is_served_one_window_at_a_time_with_its_progress_put_back() {
    let s = Setup::new("serve").await;
    let mut requester = s.requester().await;
    let (from, to) = period();
    let request = BackfillRequest::new(requester.reply_queue(), &from, &to);
    requester.request(&request.message()).await.expect("sent");
    let (_lock, server) = s.lock().await;
    let producer = s.producer(&JstCredentials::default().app_secret);
    let cancel = CancellationToken::new();

    assert!(producer.serve_one(&server, &cancel, "test").await.unwrap());
    let accepted = reply(&mut requester).await;
    assert_eq!(
        (
            accepted.event,
            accepted.windows,
            accepted.done,
            &accepted.by
        ),
        (Event::Accepted, 3, 0, &"test".to_string()),
        "{accepted:?}"
    );
    let first = reply(&mut requester).await;
    assert_eq!((first.event, first.done), (Event::Window, 1), "{first:?}");
    assert_eq!(first.statuses, ["Confirmed", "Archive"]);

    // The request went back with one window counted: the next step does the second window,
    // and does not say "accepted" again.
    assert!(producer.serve_one(&server, &cancel, "test").await.unwrap());
    let second = reply(&mut requester).await;
    assert_eq!(
        (second.event, second.done),
        (Event::Window, 2),
        "{second:?}"
    );
    assert!(producer.serve_one(&server, &cancel, "test").await.unwrap());
    let last = reply(&mut requester).await;
    assert_eq!((last.event, last.done), (Event::Finished, 3), "{last:?}");
    assert!(
        !producer.serve_one(&server, &cancel, "test").await.unwrap(),
        "nothing left in the control queue"
    );

    let wanted = s.wanted(from, to);
    let published = s.published().await;
    assert_eq!(last.published, published.len());
    assert_eq!(published.len(), wanted.len(), "each document once");
    assert_eq!(published.into_iter().collect::<BTreeSet<_>>(), wanted);
    requester.close().await;
}

#[tokio::test]
async fn a_request_whose_requester_is_gone_is_dropped_unserved() {
    let s = Setup::new("gone").await;
    let requester = s.requester().await;
    let (from, to) = period();
    let request = BackfillRequest::new(requester.reply_queue(), &from, &to);
    requester.request(&request.message()).await.expect("sent");
    let reply_queue = requester.reply_queue().to_string();
    requester.close().await;

    let (_lock, server) = s.lock().await;
    // The broker deletes the reply queue a moment after the connection closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server
        .reply(&reply_queue, "probe", b"{}".to_vec())
        .await
        .unwrap()
        != Replied::Gone
    {
        assert!(tokio::time::Instant::now() < deadline, "reply queue gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = s.producer(&JstCredentials::default().app_secret);
    let cancel = CancellationToken::new();
    assert!(producer.serve_one(&server, &cancel, "test").await.unwrap());
    assert!(
        !producer.serve_one(&server, &cancel, "test").await.unwrap(),
        "dropped, not put back"
    );
    assert!(s.published().await.is_empty(), "no window was fetched");
}

#[tokio::test]
async fn a_holder_that_stops_in_a_window_leaves_the_request_to_the_next() {
    let s = Setup::new("handover").await;
    let mut requester = s.requester().await;
    let (from, to) = period();
    let request = BackfillRequest::new(requester.reply_queue(), &from, &to);
    requester.request(&request.message()).await.expect("sent");

    // The first holder takes the request and its lock connection drops before it is settled.
    let (lock, server) = s.lock().await;
    let taken = server.next().await.unwrap().expect("the request");
    lock.release().await;
    drop(taken);

    let (_lock, server) = s.lock().await;
    let producer = s.producer(&JstCredentials::default().app_secret);
    let cancel = CancellationToken::new();
    // Back in the queue once the broker saw the first holder's connection close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !producer
        .serve_one(&server, &cancel, "second")
        .await
        .unwrap()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = reply(&mut requester).await;
    assert_eq!(
        (again.event, again.done, again.restarted),
        (Event::Accepted, 0, true),
        "{again:?}"
    );
    assert_eq!(reply(&mut requester).await.done, 1);
    requester.close().await;
}

#[tokio::test]
async fn a_window_that_fails_tells_the_requester_where_to_start_again() {
    let s = Setup::new("fails").await;
    let mut requester = s.requester().await;
    let (from, to) = period();
    let request = BackfillRequest::new(requester.reply_queue(), &from, &to);
    requester.request(&request.message()).await.expect("sent");
    let (_lock, server) = s.lock().await;
    // Jushuitan refuses the signature (code 10): a configuration failure, not retried.
    let producer = s.producer("not-the-app-secret");
    let cancel = CancellationToken::new();
    assert!(producer.serve_one(&server, &cancel, "test").await.unwrap());
    assert_eq!(reply(&mut requester).await.event, Event::Accepted);
    let failed = reply(&mut requester).await;
    assert_eq!(failed.event, Event::Failed, "{failed:?}");
    assert_eq!(
        failed.resume_from.as_deref(),
        Some(common::time::format_beijing(&from).as_str())
    );
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("10"), "{error}");
    assert!(!error.contains("not-the-app-secret"), "no secret: {error}");
    assert!(
        !producer.serve_one(&server, &cancel, "test").await.unwrap(),
        "a failed request is not put back"
    );
    requester.close().await;
}

#[tokio::test]
async fn a_replying_request_sends_every_status_to_the_requester_and_publishes_nothing() {
    let s = Setup::new("reply").await;
    let mut requester = s.requester().await;
    let (from, to) = period();
    let request = BackfillRequest::new(requester.reply_queue(), &from, &to).replying();
    requester.request(&request.message()).await.expect("sent");
    let (_lock, server) = s.lock().await;
    let producer = s.producer(&JstCredentials::default().app_secret);
    let cancel = CancellationToken::new();
    let mut documents = Vec::new();
    let last = loop {
        assert!(producer.serve_one(&server, &cancel, "test").await.unwrap());
        let mut progress = reply(&mut requester).await;
        while progress.event == Event::Accepted || progress.event == Event::Documents {
            documents.append(&mut progress.documents);
            progress = reply(&mut requester).await;
        }
        if progress.event == Event::Finished {
            break progress;
        }
        assert_eq!(progress.event, Event::Window, "{progress:?}");
    };
    let wanted: BTreeSet<i64> = s
        .docs
        .iter()
        .filter(|d| {
            let m = common::time::parse_beijing(d["modified"].as_str().unwrap()).unwrap();
            m >= from && m <= to
        })
        .map(|d| d["io_id"].as_i64().unwrap())
        .collect();
    let got: BTreeSet<i64> = documents
        .iter()
        .map(|d| d["io_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, wanted, "every status");
    assert!(
        documents.iter().any(|d| d["status"] == "Cancelled"),
        "not only the published statuses"
    );
    assert_eq!(last.published, documents.len());
    assert!(s.published().await.is_empty(), "nothing published");
    requester.close().await;
}
