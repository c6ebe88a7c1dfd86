#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst2kd dlq` on the real RabbitMQ with the real transformer: documents in an unmapped
//! warehouse are dead-lettered, listed (nothing moved), the mapping is fixed, and they are
//! replayed — once halfway, once after a replay that broke off — each ending as one bill.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::messages::Headers;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Destination, Outgoing, Work};
use e2e::{Proc, Scratch, binary, delete_queues, free_port, http, queue_messages, wait_ok};
use serde_json::{Value, json};

struct Setup {
    dir: Scratch,
    prefix: String,
    config: String,
}

impl Setup {
    fn dlq(&self, args: &[&str]) -> Output {
        let mut all = vec!["dlq"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &self.config]);
        Command::new(binary("jst2kd")).args(&all).output().unwrap()
    }

    fn list(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["list", "--format", "json"];
        args.extend_from_slice(extra);
        let out = self.dlq(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn transformer(&self, env: &[(&str, String)]) -> Proc {
        let port = free_port();
        let mut all = vec![("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
        all.extend(env.iter().cloned());
        let p = Proc::start(
            "transformer",
            "transformer",
            &["--config", &self.config],
            &all,
            &self.dir.0,
        );
        assert!(
            wait_ok(
                &http(),
                &format!("http://127.0.0.1:{port}/readyz"),
                Duration::from_secs(30)
            )
            .await,
            "{}",
            p.log_text()
        );
        p
    }

    async fn broker(&self) -> RabbitBroker {
        e2e::rabbit(&self.prefix, "e2e-dlq").await
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}

async fn wait_for(queue: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_messages(queue).unwrap_or(0) != n {
        assert!(
            Instant::now() < deadline,
            "{queue} never held {n} messages (has {:?})",
            queue_messages(queue)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn dead_letters_are_listed_in_place_and_replayed_once_after_the_mapping_is_fixed() {
    let dir = Scratch::new("dlq");
    let prefix = format!("jst2kdtest-e2e-dlq-{}", std::process::id());
    let config = format!(
        "[amqp]\nprefix = \"{prefix}\"\n[runtime]\nshutdown_timeout = \"10s\"\n[mapping]\norg = \"100\"\n[mapping.warehouses]\n\"1\" = \"CK001\"\n"
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let s = Setup {
        prefix: prefix.clone(),
        config: path.display().to_string(),
        dir,
    };

    let mut transformer = s.transformer(&[]).await;
    let rabbit = s.broker().await;
    let broker = Broker::Rabbit(rabbit.clone());
    let doc = |io_id: i64, wh_id: i64| {
        Outgoing {
        destination: Destination::Work(Work::Counts),
        message_id: format!("{io_id}@m"),
        headers: Headers::new(),
        body: json!({"io_id": io_id, "status": "Confirmed", "io_date": "2026-03-01 10:00:00", "modified": "m",
            "wh_id": wh_id, "items": [{"sku_id": "A", "qty": -1}]}).to_string().into_bytes(),
    }
    };
    const DEAD: i64 = 2000;
    let mut docs: Vec<Outgoing> = (1..=DEAD).map(|i| doc(i, 9)).collect();
    docs.push(doc(100_000, 1));
    broker.publish_all(docs).await.unwrap();
    let (dead, bills, counts) = (
        format!("{prefix}.dead"),
        format!("{prefix}.bills"),
        format!("{prefix}.counts"),
    );
    wait_for(&dead, DEAD as u64).await;
    wait_for(&bills, 1).await;

    let first = s.list(&[]);
    assert_eq!(first.len(), DEAD as usize);
    assert!(first.iter().all(|d| d["kind"] == "mapping"
        && d["stage"] == "transformer"
        && d["origin_queue"] == counts.as_str()));
    assert!(
        first[0]["error"]
            .as_str()
            .unwrap()
            .contains("under [mapping.warehouses]")
    );
    let ids = |l: &[Value]| {
        l.iter()
            .map(|d| d["message_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&s.list(&[])),
        ids(&first),
        "listing neither removes nor reorders"
    );
    assert!(s.list(&["--kind", "rejected"]).is_empty());
    assert_eq!(s.list(&["--message-id", "3@m"]).len(), 1);
    let shown = s.dlq(&["show", "3"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("jst2kd-error-kind"));
    // Export: one JSON line per dead letter on stdout; on a non-terminal, plain progress on
    // stderr ending with what was done.
    let export = s.dlq(&["export"]);
    assert_eq!(
        String::from_utf8_lossy(&export.stdout).lines().count(),
        DEAD as usize
    );
    let progress = String::from_utf8_lossy(&export.stderr);
    assert!(
        progress.contains(&format!("exporting: {DEAD} dead letters in ")),
        "{progress}"
    );
    let purge = s.dlq(&["purge"]);
    assert_eq!(
        purge.status.code(),
        Some(2),
        "purge without a terminal needs --yes"
    );
    assert_eq!(queue_messages(&dead), Some(DEAD as u64));

    // Fix the mapping, restart the transformer, replay four.
    transformer.signal("TERM");
    assert_eq!(
        transformer.wait_exit(Duration::from_secs(20)).await,
        Some(0)
    );
    let _transformer = s
        .transformer(&[("JST2KD_MAPPING__WAREHOUSES__9", "CK009".into())])
        .await;
    let out = s.dlq(&["replay", "--limit", "4"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed: 4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("replaying: 4 dead letters in "),
        "{progress}"
    );
    wait_for(&bills, 5).await;
    wait_for(&dead, DEAD as u64 - 4).await;

    // A replay killed partway: what it removed was replayed first; at most the one message it
    // held between confirm and removal comes again.
    let mut replay = Proc::start(
        "replay",
        "jst2kd",
        &["dlq", "replay", "--config", &s.config],
        &[],
        &s.dir.0,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_messages(&dead).unwrap_or(0) >= DEAD as u64 - 4
        && replay.wait_exit(Duration::from_millis(1)).await.is_none()
    {
        assert!(Instant::now() < deadline, "the replay started");
    }
    if replay.wait_exit(Duration::from_millis(1)).await.is_none() {
        replay.signal("KILL");
        replay.wait_exit(Duration::from_secs(5)).await;
    }
    // The broker gives the killed replay's held dead letters back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while e2e::queue_unacked(&dead).unwrap_or(1) > 0 {
        assert!(Instant::now() < deadline, "the dead letters came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = queue_messages(&dead).unwrap_or(0);
    eprintln!("the killed replay left {left} of {} dead letters", DEAD - 4);
    let out = s.dlq(&["replay"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("left in the dead-letter queue: 0"));
    // The broker's queue statistics lag a little behind.
    wait_for(&dead, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut consumer = broker.consume(Work::Bills, 500).await.unwrap();
    while seen.len() < DEAD as usize + 1 {
        assert!(
            Instant::now() < deadline,
            "only {} distinct bills",
            seen.len()
        );
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
            *seen
                .entry(d.message_id.clone().unwrap_or_default())
                .or_default() += 1;
            d.ack().await.unwrap();
        }
    }
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
        *seen
            .entry(d.message_id.clone().unwrap_or_default())
            .or_default() += 1;
        d.ack().await.unwrap();
    }
    consumer.cancel().await;
    assert_eq!(seen.len(), DEAD as usize + 1, "nothing lost");
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 1,
        "at most the one in flight at the kill is sent again ({twice}); the loader acks it as a duplicate"
    );
    rabbit.close().await;
}
