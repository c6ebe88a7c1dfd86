#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The producer binary on the real RabbitMQ: one poller at a time (the broker-side lock), and a
//! SIGKILL in the middle of a poll that re-sends instead of skipping.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::queue::{Broker, Work};
use e2e::{
    Proc, Scratch, delete_queues, free_port, get_json, http, queue_messages, run_jst2kd, status,
    wait_ok,
};
use serde_json::Value;

struct Setup {
    dir: Scratch,
    prefix: String,
    jst: String,
    config: String,
    _sim: Proc,
}

impl Setup {
    async fn new(test: &str, documents: usize) -> Self {
        let dir = Scratch::new(test);
        let prefix = format!("jst2kdtest-e2e-{test}-{}", std::process::id());
        let port = free_port();
        let sim = Proc::start(
            "sim-jst",
            "jst2kd",
            &[
                "sim",
                "jst",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--generate",
                &documents.to_string(),
                "--seed",
                "21",
            ],
            &[],
            &dir.0,
        );
        let jst = format!("http://127.0.0.1:{port}");
        assert!(
            wait_ok(
                &http(),
                &format!("{jst}/_sim/stats"),
                Duration::from_secs(20)
            )
            .await
        );
        let config = format!(
            "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5\"\nprefix = \"{prefix}\"\n\
             [jst]\nbase_url = \"{jst}\"\napp_key = \"local-app-key\"\napp_secret = \"local-app-secret\"\n\
             access_token = \"local-access-token\"\nrefresh_token = \"local-refresh-token\"\n\
             [producer]\npoll_interval = \"1s\"\nstart_at = \"31d\"\nlag = \"0s\"\ncheckpoint = \"{}\"\n",
            dir.path("producer.checkpoint.json").display()
        );
        let path = dir.path("config.toml");
        std::fs::write(&path, config).unwrap();
        Self {
            prefix,
            jst,
            config: path.display().to_string(),
            _sim: sim,
            dir,
        }
    }

    fn producer(&self, name: &str, env: &[(&str, String)]) -> (Proc, String) {
        let port = free_port();
        let mut all = vec![("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
        all.extend(env.iter().cloned());
        (
            Proc::start(
                name,
                "producer",
                &["--config", &self.config],
                &all,
                &self.dir.0,
            ),
            format!("http://127.0.0.1:{port}"),
        )
    }

    async fn wanted(&self) -> BTreeSet<String> {
        let docs = get_json(&http(), &format!("{}/_sim/counts", self.jst))
            .await
            .unwrap();
        docs.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["status"] == "Confirmed" || d["status"] == "Archive")
            .map(|d| format!("{}@{}", d["io_id"], d["modified"].as_str().unwrap()))
            .collect()
    }

    /// Every message id in the counts queue (consumed and acked).
    async fn published(&self) -> Vec<String> {
        let rabbit = e2e::rabbit(&self.prefix, "e2e-reader").await;
        let mut consumer = Broker::Rabbit(rabbit.clone())
            .consume(Work::Counts, 500)
            .await
            .unwrap();
        let mut ids = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            ids.push(d.message_id.clone().unwrap_or_default());
            d.ack().await.unwrap();
        }
        consumer.cancel().await;
        rabbit.close().await;
        ids
    }

    /// `jst2kd backfill --from … --to …` with this setup's configuration, to its end.
    async fn backfill(
        &self,
        from: &chrono::DateTime<chrono::FixedOffset>,
        to: &chrono::DateTime<chrono::FixedOffset>,
    ) -> std::process::Output {
        run_jst2kd(
            &[
                "backfill",
                "--config",
                &self.config,
                "--from",
                &common::time::format_beijing(from),
                "--to",
                &common::time::format_beijing(to),
            ],
            &[],
        )
        .await
    }

    fn checkpoint(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        let bytes = std::fs::read(self.dir.path("producer.checkpoint.json")).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        chrono::DateTime::parse_from_rfc3339(v["until"].as_str()?).ok()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}

#[tokio::test]
async fn only_one_producer_polls_and_the_second_takes_over() {
    let s = Setup::new("lock", 30).await;
    let client = http();
    let (mut first, first_url) = s.producer("producer-1", &[]);
    assert!(
        wait_ok(
            &client,
            &format!("{first_url}/readyz"),
            Duration::from_secs(30)
        )
        .await,
        "first ready:\n{}",
        first.log_text()
    );
    let (mut second, second_url) = s.producer("producer-2", &[]);
    assert!(
        wait_ok(
            &client,
            &format!("{second_url}/healthz"),
            Duration::from_secs(30)
        )
        .await
    );
    // Wait for the second to have tried the lock (its own log says so), then check it waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !second
        .log_text()
        .contains("Another producer holds the lock")
    {
        assert!(
            Instant::now() < deadline,
            "the second tried the lock:\n{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(&client, &format!("{second_url}/readyz")).await,
        503,
        "the second waits, not ready"
    );

    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10)).await;
    assert!(
        wait_ok(
            &client,
            &format!("{second_url}/readyz"),
            Duration::from_secs(30)
        )
        .await,
        "the second takes over:\n{}",
        second.log_text()
    );
    assert!(second.log_text().contains("Holding the producer lock"));
    second.signal("TERM");
    assert_eq!(
        second.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        second.log_text()
    );
}

#[tokio::test]
async fn a_sigkill_mid_poll_resends_and_never_skips_a_window() {
    let s = Setup::new("sigkill", 600).await;
    let wanted = s.wanted().await;
    // One call a second, so the first poll (several windows) takes a while.
    let (mut slow, _) = s.producer(
        "producer-slow",
        &[("JST2KD_JST__RATE_PER_SECOND", "1".into())],
    );
    let counts = format!("{}.counts", s.prefix);
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_messages(&counts).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the producer published: {}",
            slow.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slow.signal("KILL");
    slow.wait_exit(Duration::from_secs(10)).await;
    let at_kill = s.checkpoint();
    let end = common::time::now_beijing() - chrono::Duration::minutes(1);
    assert!(
        at_kill.is_none_or(|c| c < end),
        "killed before the poll finished"
    );

    let (mut again, _) = s.producer("producer-again", &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while s.checkpoint().is_none_or(|c| c < end) {
        assert!(
            Instant::now() < deadline,
            "the restarted producer caught up: {}",
            again.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    again.signal("TERM");
    assert_eq!(again.wait_exit(Duration::from_secs(30)).await, Some(0));
    let published: BTreeSet<String> = s.published().await.into_iter().collect();
    let missing: Vec<_> = wanted.difference(&published).collect();
    assert!(missing.is_empty(), "skipped: {missing:?}");
}

#[tokio::test]
async fn a_refused_app_is_reported_not_ready_and_the_producer_keeps_running() {
    let s = Setup::new("refused", 20).await;
    let client = http();
    let (mut producer, url) = s.producer(
        "producer-refused",
        &[("JST2KD_JST__APP_SECRET", "not-the-secret".into())],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !producer.log_text().contains("Jushuitan refused the app") {
        assert!(
            Instant::now() < deadline,
            "the refusal is logged:\n{}",
            producer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status(&client, &format!("{url}/readyz")).await,
        503,
        "not ready"
    );
    assert_eq!(
        status(&client, &format!("{url}/healthz")).await,
        200,
        "alive"
    );
    assert!(
        !producer.log_text().contains("not-the-secret"),
        "the secret is not logged"
    );
    assert!(
        producer.wait_exit(Duration::from_secs(2)).await.is_none(),
        "still running, no crash loop"
    );
    producer.signal("TERM");
    assert_eq!(producer.wait_exit(Duration::from_secs(30)).await, Some(0));
}

#[tokio::test]
async fn backfill_publishes_a_past_period_without_touching_the_checkpoint() {
    let s = Setup::new("backfill", 200).await;
    let docs = get_json(&http(), &format!("{}/_sim/counts", s.jst))
        .await
        .unwrap();
    let now = common::time::now_beijing();
    let (from, to) = (
        now - chrono::Duration::days(20),
        now - chrono::Duration::days(2),
    );
    let expected = docs
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] == "Confirmed" || d["status"] == "Archive")
        .filter(|d| {
            let m = common::time::parse_beijing(d["modified"].as_str().unwrap()).unwrap();
            m >= from && m <= to
        })
        .count();
    let out = s.backfill(&from, &to).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("windows: 3"), "{stdout}");
    assert!(
        stdout.contains(&format!("documents published: {expected}")),
        "expected {expected}:\n{stdout}"
    );
    assert!(s.checkpoint().is_none(), "the checkpoint is not touched");
    assert_eq!(s.published().await.len(), expected);

    let bad = run_jst2kd(
        &[
            "backfill",
            "--config",
            &s.config,
            "--from",
            "yesterday",
            "--to",
            "today",
        ],
        &[],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "a bad time is a usage error");
}

/// Issue 18, point 2: a backfill beside a polling producer goes through the producer's own
/// pacer. The simulator enforces the per-app limits (5 calls in any second, 100 in any minute);
/// two callers pacing themselves separately would break them, one pacer never does.
#[tokio::test]
async fn backfill_beside_a_polling_producer_shares_its_quota() {
    // Enough documents that a 7-day window is several pages per status.
    let s = Setup::new("backfill-beside", 2_000).await;
    let client = http();
    let (mut producer, url) = s.producer(
        "producer",
        &[("JST2KD_PRODUCER__START_AT", "2d".to_string())],
    );
    assert!(
        wait_ok(&client, &format!("{url}/readyz"), Duration::from_secs(30)).await,
        "producer ready:\n{}",
        producer.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.checkpoint().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let polled_until = s.checkpoint().expect("the producer polled");

    // Older than anything the producer polls (it started 2 days back).
    let now = common::time::now_beijing();
    let (from, to) = (
        now - chrono::Duration::days(20),
        now - chrono::Duration::days(3),
    );
    let expected: BTreeSet<String> = s
        .wanted()
        .await
        .into_iter()
        .filter(|id| {
            let modified = id.split_once('@').unwrap().1;
            let m = common::time::parse_beijing(modified).unwrap();
            m >= from && m <= to
        })
        .collect();
    assert!(expected.len() > 500, "{} documents", expected.len());
    let out = s.backfill(&from, &to).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("fetched by: producer (pid"),
        "the running producer fetched it:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("windows: 3"), "{stdout}");
    assert!(
        stdout.contains(&format!("documents published: {}", expected.len())),
        "expected {}:\n{stdout}",
        expected.len()
    );

    // The producer went on polling meanwhile, and no call drew 199/200.
    let stats = get_json(&client, &format!("{}/_sim/stats", s.jst))
        .await
        .unwrap();
    assert_eq!(
        stats
            .get("rate_limited")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        0,
        "{stats}\n{}",
        producer.log_text()
    );
    assert!(s.checkpoint().unwrap() > polled_until, "polls went on");

    // Every document of the period once, nothing of it twice.
    let published = s.published().await;
    let mut times: std::collections::BTreeMap<&str, usize> = Default::default();
    for id in &published {
        *times.entry(id.as_str()).or_default() += 1;
    }
    for id in &expected {
        assert_eq!(times.get(id.as_str()), Some(&1), "{id}");
    }
    assert!(
        producer.log_text().contains("Backfill window published"),
        "{}",
        producer.log_text()
    );
    producer.signal("TERM");
    assert_eq!(producer.wait_exit(Duration::from_secs(30)).await, Some(0));
}
