#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The producer and the Jushuitan token lifecycle, against the simulator: a merchant's own app
//! polls across several token lifetimes without an error and without losing a document; a
//! service provider's app whose token died goes not ready, counted, saying the merchant must
//! authorise again, and recovers once a new token is configured.

use std::path::PathBuf;
use std::time::Duration;

use common::config::{Dur, Secret};
use common::queue::memory::MemoryBroker;
use common::queue::{AmqpConfig, Broker, Topology, Work};
use common::telemetry::{Health, Metrics, Stage};
use jst::{AppKind, JstClient, JstConfig};
use producer::{Producer, ProducerConfig, ProducerError, StartAt};
use serde_json::{Value, json};
use sim::jst::{JstBehaviour, JstCredentials, JstSim};
use tokio_util::sync::CancellationToken;

fn docs(n: i64) -> Vec<Value> {
    let modified =
        common::time::format_beijing(&(common::time::now_beijing() - chrono::Duration::hours(2)));
    (1..=n)
        .map(|io_id| {
            json!({"io_id": io_id, "status": "Confirmed", "io_date": modified,
                "modified": modified, "wh_id": 1, "wms_co_id": 0,
                "items": [{"sku_id": "A", "qty": -1}]})
        })
        .collect()
}

struct Setup {
    url: String,
    sim: JstSim,
    dir: PathBuf,
    broker: MemoryBroker,
}

impl Setup {
    async fn new(test: &str, behaviour: JstBehaviour) -> Self {
        let sim = JstSim::with_behaviour(JstCredentials::default(), docs(30), behaviour);
        let url = sim::spawn_local(sim.router(), CancellationToken::new())
            .await
            .expect("serve");
        let dir = std::env::temp_dir().join(format!("jst2kd-tokens-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let broker = MemoryBroker::new(Topology::from_config(&AmqpConfig::default()));
        Self {
            url,
            sim,
            dir,
            broker,
        }
    }

    fn producer(
        &self,
        kind: AppKind,
        access: &str,
        refresh: &str,
        metrics: &std::sync::Arc<Metrics>,
    ) -> Producer {
        let c = JstCredentials::default();
        let jst = JstConfig {
            base_url: self.url.clone(),
            app_key: Secret::new(c.app_key),
            app_secret: Secret::new(c.app_secret),
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            app_kind: kind,
            rate_per_second: 0,
            rate_per_minute: 0,
            timeout: Dur::secs(5),
            ..JstConfig::default()
        };
        let checkpoint = self.dir.join("producer.checkpoint.json");
        let client = JstClient::new(&jst, Some(metrics.clone()))
            .and_then(|c| c.with_token_file(jst::token_file_for(&checkpoint)))
            .expect("client");
        let config = ProducerConfig {
            start_at: StartAt::Ago(Duration::from_secs(86_400)),
            lag: Dur::secs(0),
            poll_interval: Dur::millis(300),
            statuses: vec!["Confirmed".into()],
            checkpoint,
            ..ProducerConfig::default()
        };
        Producer::new(
            client,
            Broker::Memory(self.broker.clone()),
            config,
            metrics.clone(),
        )
    }

    fn published(&self) -> usize {
        usize::try_from(self.broker.depth(Work::Counts)).unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn an_own_app_polls_across_token_lifetimes_without_an_error() {
    let s = Setup::new(
        "own",
        JstBehaviour {
            rate_limit: false,
            token_ttl: Some(Duration::from_secs(2)),
            ..JstBehaviour::default()
        },
    )
    .await;
    let c = JstCredentials::default();
    let metrics = Metrics::new(&[Stage::Producer]);
    let producer = s.producer(AppKind::Own, &c.access_token, &c.refresh_token, &metrics);
    // Seven seconds of polls: three token lifetimes.
    let until = std::time::Instant::now() + Duration::from_secs(7);
    let mut polls = 0;
    while std::time::Instant::now() < until {
        producer.poll_once().await.expect("every poll succeeds");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(s.published(), 30, "every document once, none lost");
    let stats = s.sim.stats();
    assert!(
        stats.get("token_refreshed").copied().unwrap_or(0) >= 3,
        "{polls} polls: {stats:?}"
    );
    // Renewed ahead (a tenth of the 2 s lifetime): at most a stalled machine's one call meets
    // an expired token, and even that is renewed and retried, never an error.
    assert!(
        stats.get("token_expired").copied().unwrap_or(0) <= 1,
        "renewed ahead: {stats:?}"
    );
    let text = String::from_utf8(metrics.render()).unwrap();
    let expiry = text
        .lines()
        .find(|l| l.starts_with("jst2kd_jst_token_expiry_timestamp_seconds{app_kind=\"own\"}"))
        .expect("the expiry, labelled with the app kind");
    // The gauge follows each renewal: the last expiry is within a lifetime of now (whole
    // seconds; the last token may just have run out when the loop ended).
    let at: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = common::http::unix_now() as f64;
    assert!((at - now).abs() <= 3.0, "{expiry} at {now}");
}

#[tokio::test]
async fn an_isv_app_goes_not_ready_and_recovers_when_a_new_token_is_configured() {
    let s = Setup::new(
        "isv",
        JstBehaviour {
            rate_limit: false,
            isv: true,
            ..JstBehaviour::default()
        },
    )
    .await;
    let c = JstCredentials::default();
    let metrics = Metrics::new(&[Stage::Producer]);
    s.sim.expire_tokens();
    let producer = s.producer(AppKind::Isv, &c.access_token, &c.refresh_token, &metrics);
    match producer.poll_once().await {
        Err(ProducerError::Jst(e)) => {
            assert!(e.is_configuration(), "{e}");
            assert!(e.to_string().contains("authorise the app again"), "{e}");
        }
        other => panic!("expected the token error, got {other:?}"),
    }
    // The running producer: not ready, and the refusal counted.
    let health = Health::new();
    health.set_ready(true);
    let cancel = CancellationToken::new();
    let run = producer.run(&cancel, &health, None);
    tokio::pin!(run);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::select! {
            _ = &mut run => panic!("the producer stopped"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    cancel.cancel();
    let _ = run.await;
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with("jst2kd_jst_requests_total{outcome=\"token_expired\"}")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
    assert_eq!(
        s.sim.stats().get("token_refreshed"),
        None,
        "an ISV app never refreshes"
    );
    assert_eq!(s.published(), 0);
    // The merchant authorises again; the new pair, configured, wins over the saved one.
    let (access, refresh) = s.sim.authorise();
    let producer = s.producer(AppKind::Isv, &access, &refresh, &metrics);
    producer.poll_once().await.expect("authorised again");
    assert_eq!(s.published(), 30);
}
