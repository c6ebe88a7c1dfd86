#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The producer against the Jushuitan simulator (real HTTP on loopback) and the in-process
//! queue: faults, restarts, new documents, token refresh.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::config::{Dur, Secret};

use common::queue::AmqpConfig;

use jst::JstConfig;

use common::queue::memory::MemoryBroker;
use common::queue::{Broker, Topology, Work};
use common::telemetry::{Metrics, Stage};
use jst::JstClient;
use producer::Producer;
use producer::{ProducerConfig, StartAt};
use serde_json::{Value, json};
use sim::jst::{JstBehaviour, JstCredentials, JstSim};
use tokio_util::sync::CancellationToken;

struct Setup {
    sim: JstSim,
    url: String,
    broker: MemoryBroker,
    dir: PathBuf,
}

impl Setup {
    async fn new(test: &str, docs: Vec<Value>, behaviour: JstBehaviour) -> Self {
        let sim = JstSim::with_behaviour(JstCredentials::default(), docs, behaviour);
        let url = sim::spawn_local(sim.router(), CancellationToken::new())
            .await
            .expect("serve");
        let dir =
            std::env::temp_dir().join(format!("jst2kd-producer-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let broker = MemoryBroker::new(Topology::from_config(&AmqpConfig::default()));
        Self {
            sim,
            url,
            broker,
            dir,
        }
    }

    fn jst_config(&self) -> JstConfig {
        let c = JstCredentials::default();
        JstConfig {
            base_url: self.url.clone(),
            app_key: Secret::new(c.app_key),
            app_secret: Secret::new(c.app_secret),
            access_token: Secret::new(c.access_token),
            refresh_token: Secret::new(c.refresh_token),
            timeout: Dur::secs(5),
            ..JstConfig::default()
        }
    }

    fn checkpoint(&self) -> PathBuf {
        self.dir.join("producer.checkpoint.json")
    }

    /// A producer as a fresh process would build it (new client, new memory of published ids).
    fn producer(&self) -> Producer {
        let client = JstClient::new(&self.jst_config(), None)
            .and_then(|c| c.with_token_file(jst::token_file_for(&self.checkpoint())))
            .expect("client");
        let config = ProducerConfig {
            start_at: StartAt::Ago(Duration::from_secs(31 * 86_400)),
            lag: Dur::secs(0),
            checkpoint: self.checkpoint(),
            ..ProducerConfig::default()
        };
        Producer::new(
            client,
            Broker::Memory(self.broker.clone()),
            config,
            Metrics::new(&[Stage::Producer]),
        )
    }

    /// The message ids waiting in the counts queue (drained).
    async fn drain(&self) -> Vec<String> {
        let mut consumer = Broker::Memory(self.broker.clone())
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
        consumer.cancel().await;
        ids
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `io_id@modified` of the documents the producer must publish (Confirmed and Archive).
fn wanted(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter(|d| d["status"] == "Confirmed" || d["status"] == "Archive")
        .map(|d| format!("{}@{}", d["io_id"], d["modified"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn with_faults_every_confirmed_document_is_published_at_least_once() {
    let docs = sim::jst::generate(150, 11);
    let behaviour = JstBehaviour {
        fail_rate: 0.3,
        seed: 5,
        ..JstBehaviour::default()
    };
    let s = Setup::new("faults", docs.clone(), behaviour).await;
    let producer = s.producer();
    // A poll that still fails after its retries is simply run again, as the run loop does.
    let mut polls = 0;
    while producer.poll_once().await.is_err() {
        polls += 1;
        assert!(polls < 5, "five polls in a row failed");
    }
    let published: BTreeSet<String> = s.drain().await.into_iter().collect();
    assert!(
        published.is_superset(&wanted(&docs)),
        "missing: {:?}",
        wanted(&docs).difference(&published).collect::<Vec<_>>()
    );
    let stats = s.sim.stats();
    assert!(
        stats.keys().any(|k| k.starts_with("fault_")),
        "faults were injected: {stats:?}"
    );
    assert_eq!(
        stats.get("rate_limited"),
        None,
        "the client's pacing kept under the limits: {stats:?}"
    );
}

#[tokio::test]
async fn a_restart_with_an_up_to_date_checkpoint_republishes_nothing_old_and_new_documents_come_in_one_poll()
 {
    let docs = sim::jst::generate(80, 12);
    let s = Setup::new("restart", docs.clone(), JstBehaviour::default()).await;
    s.producer().poll_once().await.expect("first poll");
    assert_eq!(s.drain().await.len(), wanted(&docs).len());

    // A restart: the overlap (5 minutes) holds none of the generated documents (they end an
    // hour ago), so nothing is sent again.
    let restarted = s.producer();
    restarted.poll_once().await.expect("second poll");
    assert!(s.drain().await.is_empty(), "nothing old re-published");

    let modified = common::time::format_beijing(
        &(common::time::now_beijing() - chrono::Duration::seconds(30)),
    );
    s.sim.put(vec![
        json!({"io_id": 999_999, "status": "Confirmed", "modified": modified, "io_date": modified,
        "wh_id": 1, "wms_co_id": 0, "items": [{"sku_id": "A", "qty": -1}]}),
    ]);
    restarted.poll_once().await.expect("third poll");
    assert_eq!(
        s.drain().await,
        vec![format!("999999@{modified}")],
        "the new document, once"
    );
    // The overlap re-reads it, but the same version is not published twice by one producer.
    restarted.poll_once().await.expect("fourth poll");
    assert!(s.drain().await.is_empty());
}

#[tokio::test]
async fn a_refreshed_token_survives_a_restart() {
    let docs = sim::jst::generate(10, 13);
    let s = Setup::new("token", docs, JstBehaviour::default()).await;
    s.sim.expire_tokens();
    s.producer()
        .poll_once()
        .await
        .expect("refreshes on code 100 and polls");
    let current = s.sim.access_token();
    assert!(current.starts_with("at-"), "a new token was issued");
    let saved: Value = serde_json::from_slice(
        &std::fs::read(jst::token_file_for(&s.checkpoint())).expect("token file"),
    )
    .expect("json");
    assert_eq!(saved["access_token"], current.as_str());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(jst::token_file_for(&s.checkpoint()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the token file is private");
    }
    // A restarted producer (configured with the original, now dead, token) uses the saved one:
    // no further refresh happens.
    s.producer()
        .poll_once()
        .await
        .expect("polls with the saved token");
    assert_eq!(s.sim.access_token(), current);
    assert_eq!(s.sim.stats().get("token_refreshed"), Some(&1));
}

#[tokio::test]
async fn a_document_leaving_the_result_set_while_paging_does_not_make_another_slip_through() {
    // 120 Confirmed documents in one window: three pages of 50, one call a second.
    let now = common::time::now_beijing();
    let docs: Vec<Value> = (0..120)
        .map(|i| {
            let m = common::time::format_beijing(&(now - chrono::Duration::minutes(300 - i)));
            json!({"io_id": 5000 + i, "status": "Confirmed", "modified": m, "io_date": m, "wh_id": 1,
                "items": [{"sku_id": "A", "qty": -1}]})
        })
        .collect();
    let s = Setup::new("shift", docs.clone(), JstBehaviour::default()).await;
    let mut jst = s.jst_config();
    jst.rate_per_second = 1;
    let client = JstClient::new(&jst, None).expect("client");
    let config = ProducerConfig {
        start_at: StartAt::Ago(Duration::from_secs(86_400)),
        lag: Dur::secs(0),
        statuses: vec!["Confirmed".into()],
        checkpoint: s.checkpoint(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(
        client,
        Broker::Memory(s.broker.clone()),
        config,
        Metrics::new(&[Stage::Producer]),
    );
    let sim = s.sim.clone();
    let poll = tokio::spawn(async move { producer.poll_once().await });
    // As soon as the first page is served, the first document is cancelled: every later one
    // moves up a place, and the 51st would fall between pages one and two.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sim.stats().get("ok").copied().unwrap_or(0) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first page was never served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut cancelled = docs[0].clone();
    cancelled["status"] = json!("Cancelled");
    sim.put(vec![cancelled]);
    poll.await.expect("task").expect("poll");
    let published: BTreeSet<String> = s.drain().await.into_iter().collect();
    let confirmed: BTreeSet<String> = docs[1..]
        .iter()
        .map(|d| format!("{}@{}", d["io_id"], d["modified"].as_str().unwrap()))
        .collect();
    assert!(
        published.is_superset(&confirmed),
        "slipped through: {:?}",
        confirmed.difference(&published).collect::<Vec<_>>()
    );
    assert!(
        s.sim.stats().get("ok").copied().unwrap_or(0) > 3,
        "the window was scanned again"
    );
}
