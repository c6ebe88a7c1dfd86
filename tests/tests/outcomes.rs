#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Issue 19, point 1: the outcome log of a pipeline run on RabbitMQ holds every kind of event.
//! The run is made to meet each on purpose:
//! - an unmapped warehouse gives a dead letter;
//! - Kingdee answering "busy" gives retries;
//! - Archive documents outside `mapping.statuses` are skipped;
//! - `after_save = "audit"` submits and audits;
//! - a backfill of the whole period brings duplicates;
//! - a document changed after booking brings a conflict.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::outcomes::{self, Outcome, OutcomeKind};
use common::queue::Broker;
use common::queue::rabbit::RabbitBroker;
use e2e::{Proc, Scratch, Sims, delete_queues, free_port, http};
use serde_json::{Value, json};

/// Every generated warehouse but `4`: its documents have no mapping.
const WAREHOUSES: [(&str, &str); 4] = [
    ("1", "CK001"),
    ("2", "CK002"),
    ("3", "CK003"),
    ("10001:1", "CK101"),
];

struct Run {
    dir: Scratch,
    prefix: String,
    sims: Sims,
    config: String,
    env: Vec<(&'static str, String)>,
}

impl Run {
    fn worker(&self, name: &str) -> Proc {
        let mut env = self.env.clone();
        env.push((
            "JST2KD_METRICS__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ));
        Proc::start(name, name, &["--config", &self.config], &env, &self.dir.0)
    }

    /// Runs `jst2kd` with this run's configuration, to its end within three minutes.
    async fn jst2kd(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--config", self.config.as_str()])
            .collect();
        e2e::run_jst2kd(&args, &self.env).await
    }

    async fn broker(&self) -> RabbitBroker {
        e2e::rabbit(&self.prefix, "e2e-outcomes").await
    }

    /// Reads the outcome log until `done` holds, or panics after `timeout`.
    async fn until(
        &self,
        broker: &RabbitBroker,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Outcome]) -> bool,
    ) -> Vec<Outcome> {
        let deadline = Instant::now() + timeout;
        let since = chrono::Utc::now() - chrono::Duration::hours(1);
        loop {
            let all = outcomes::read(&Broker::Rabbit(broker.clone()), since, |_| true)
                .await
                .unwrap();
            if done(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; kinds so far {:?}; dead letters {:?}",
                kinds(&all),
                all.iter()
                    .filter(|o| o.event == OutcomeKind::DeadLettered)
                    .map(|o| (o.io_id, o.details.get("kind").cloned()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}

fn kinds(all: &[Outcome]) -> BTreeMap<&'static str, usize> {
    let mut kinds = BTreeMap::new();
    for o in all {
        *kinds.entry(o.event.as_str()).or_default() += 1;
    }
    kinds
}

fn has(all: &[Outcome], event: OutcomeKind, pred: impl Fn(&Outcome) -> bool) -> bool {
    all.iter().any(|o| o.event == event && pred(o))
}

#[tokio::test]
async fn a_pipeline_run_records_every_kind_of_outcome() {
    let dir = Scratch::new("outcomes");
    let prefix = format!("jst2kdtest-e2e-outcomes-{}", std::process::id());
    let sims = Sims::start_with(
        &dir.0,
        &["--generate", "60", "--seed", "7", "--rate-limit", "off"],
        &["--busy-rate", "0.3", "--seed", "3"],
    )
    .await;
    let config = sims.worker_toml(
        &prefix,
        &dir.path("producer.checkpoint.json"),
        &WAREHOUSES,
        "",
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let run = Run {
        prefix,
        config: path.display().to_string(),
        env: vec![
            ("JST2KD_AMQP__RETRY_DELAYS", "1s,1s,1s,1s,1s,1s".to_string()),
            ("JST2KD_MAPPING__STATUSES", "Confirmed".to_string()),
            ("JST2KD_KINGDEE__AFTER_SAVE", "audit".to_string()),
        ],
        sims,
        dir,
    };
    let broker = run.broker().await;
    let _loader = run.worker("loader");
    let _transformer = run.worker("transformer");
    let _producer = run.worker("producer");

    let docs: Vec<Value> = e2e::get_json(&http(), &format!("{}/_sim/counts", run.sims.jst))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let unmapped: Vec<i64> = docs
        .iter()
        .filter(|d| d["status"] == "Confirmed" && d["wh_id"] == 4 && d["wms_co_id"] == 0)
        .map(|d| d["io_id"].as_i64().unwrap())
        .collect();
    assert!(!unmapped.is_empty(), "the generated set uses warehouse 4");

    let all = run
        .until(
            &broker,
            "a run's outcomes",
            Duration::from_secs(120),
            |all| {
                [
                    OutcomeKind::Fetched,
                    OutcomeKind::Published,
                    OutcomeKind::Skipped,
                    OutcomeKind::Mapped,
                    OutcomeKind::DeadLettered,
                    OutcomeKind::Retried,
                    OutcomeKind::Booked,
                    OutcomeKind::Submitted,
                    OutcomeKind::Audited,
                ]
                .iter()
                .all(|k| has(all, *k, |_| true))
                    && has(all, OutcomeKind::DeadLettered, |o| {
                        o.io_id.is_some_and(|id| unmapped.contains(&id))
                    })
                    // The producer records a page's `published` once it settles the page,
                    // which can be after its documents were booked (the next pages are being
                    // fetched meanwhile): wait for one document whose whole story is there.
                    && all.iter().any(|m| {
                        m.event == OutcomeKind::Mapped
                            && m.details["bills"].as_array().is_some_and(|bills| {
                                bills.iter().all(|b| {
                                    has(all, OutcomeKind::Audited, |o| {
                                        o.bill_no.as_deref() == b.as_str()
                                    })
                                })
                            })
                            && has(all, OutcomeKind::Published, |p| p.io_id == m.io_id)
                    })
            },
        )
        .await;
    // Each event names its document, and the details say what happened.
    let dead = all
        .iter()
        .find(|o| o.event == OutcomeKind::DeadLettered)
        .unwrap();
    assert!(unmapped.contains(&dead.io_id.unwrap()), "{dead:?}");
    assert_eq!(dead.details["kind"], "mapping", "{dead:?}");
    assert_eq!(dead.stage, "transformer");
    // Archive documents are outside `mapping.statuses` here.
    let skipped = all
        .iter()
        .find(|o| o.event == OutcomeKind::Skipped && o.details["reason"] == "status")
        .expect("a document skipped for its status");
    assert_eq!(skipped.details["reason"], "status", "{skipped:?}");
    assert!(skipped.modified.is_some(), "{skipped:?}");
    let retried = all
        .iter()
        .find(|o| o.event == OutcomeKind::Retried)
        .unwrap();
    assert_eq!(retried.stage, "loader");
    assert!(
        retried.bill_no.is_some() && retried.io_id.is_some(),
        "{retried:?}"
    );
    let fetched = all
        .iter()
        .find(|o| o.event == OutcomeKind::Fetched)
        .unwrap();
    assert!(fetched.details.contains_key("window"), "{fetched:?}");
    assert!(
        has(&all, OutcomeKind::Booked, |o| o.details["result"]
            == "created"
            && o.details.get("id").is_some_and(Value::is_i64)),
        "{:?}",
        all.iter()
            .filter(|o| o.event == OutcomeKind::Booked)
            .collect::<Vec<_>>()
    );

    // `jst2kd trace` tells each story, ending in where the document is now.
    // A document all of whose bills are audited (another may have a bill still in retry).
    let booked_id = all
        .iter()
        .filter(|m| m.event == OutcomeKind::Mapped)
        .find(|m| {
            m.details["bills"].as_array().is_some_and(|bills| {
                bills.iter().all(|b| {
                    has(&all, OutcomeKind::Audited, |o| {
                        o.bill_no.as_deref() == b.as_str()
                    })
                })
            }) && has(&all, OutcomeKind::Published, |p| p.io_id == m.io_id)
        })
        .and_then(|m| m.io_id)
        .expect("a document with every bill audited");
    let out = run
        .jst2kd(&["trace", &booked_id.to_string(), "--kingdee"])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for word in ["fetched", "published", "mapped", "booked", "audited"] {
        assert!(text.contains(word), "{word}:\n{text}");
    }
    assert!(text.contains("\nnow: bill JSTPD"), "{text}");
    assert!(text.contains("audited\n"), "{text}");
    assert!(
        text.contains("kingdee: JSTPD") && text.contains(" id "),
        "{text}"
    );
    let out = run
        .jst2kd(&["trace", &skipped.io_id.unwrap().to_string()])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("now: skipped: status"), "{text}");
    let out = run
        .jst2kd(&[
            "trace",
            &dead.io_id.unwrap().to_string(),
            "--format",
            "json",
        ])
        .await;
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(
        json["now"]
            .as_str()
            .unwrap()
            .starts_with("in the dead letters (mapping)"),
        "{json}"
    );
    assert!(json["events"].as_array().unwrap().len() >= 3, "{json}");
    let out = run.jst2kd(&["trace", "1"]).await;
    assert_eq!(out.status.code(), Some(1), "an unknown document");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event"));

    // A document changed after booking: its bill number is taken by other entries.
    let booked: Vec<i64> = all
        .iter()
        .filter(|o| o.event == OutcomeKind::Booked)
        .filter_map(|o| o.io_id)
        .collect();
    let mut changed = docs
        .iter()
        .find(|d| d["io_id"].as_i64() == booked.first().copied())
        .unwrap()
        .clone();
    let io_id = changed["io_id"].as_i64().unwrap();
    for item in changed["items"].as_array_mut().unwrap() {
        if let Some(q) = item["qty"].as_i64() {
            item["qty"] = json!(q - 1);
        }
        if let Some(obj) = item.as_object_mut() {
            obj.remove("batchs");
        }
    }
    changed["modified"] = json!(common::time::format_beijing(&common::time::now_beijing()));
    let stored = http()
        .post(format!("{}/_sim/counts", run.sims.jst))
        .json(&json!([changed]))
        .send()
        .await
        .unwrap();
    assert!(stored.status().is_success());
    // The whole period again: every document a second time, and the booked ones duplicates.
    let now = common::time::now_beijing();
    let out = run
        .jst2kd(&[
            "backfill",
            "--from",
            &common::time::format_beijing(&(now - chrono::Duration::days(31))),
            "--to",
            &common::time::format_beijing(&(now - chrono::Duration::hours(2))),
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = run
        .until(
            &broker,
            "a duplicate and a conflict",
            Duration::from_secs(120),
            |all| {
                has(all, OutcomeKind::Booked, |o| {
                    o.details["result"] == "duplicate"
                }) && has(all, OutcomeKind::Conflict, |o| o.io_id == Some(io_id))
            },
        )
        .await;
    let conflict = all
        .iter()
        .find(|o| o.event == OutcomeKind::Conflict)
        .unwrap();
    assert_eq!(conflict.stage, "loader");
    assert!(conflict.bill_no.is_some(), "{conflict:?}");
    assert!(
        has(&all, OutcomeKind::DeadLettered, |o| {
            o.io_id == Some(io_id) && o.details["kind"] == "conflict"
        }),
        "the conflict is dead-lettered too"
    );
    broker.close().await;
}
