#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Issue 19, point 3: `jst2kd reconcile` on a clean run (exit 0), then after each kind of
//! difference is made on purpose through the simulators' hooks, each listed once with the
//! right kind and the outcome log's reason (exit 1). A producer runs throughout, so the
//! Jushuitan reads go through it.

use std::time::{Duration, Instant};

use common::outcomes::{self, OutcomeKind};
use common::queue::Broker;
use e2e::{Proc, Scratch, Sims, delete_queues, free_port, get_json, http};
use serde_json::{Value, json};

struct Run {
    dir: Scratch,
    prefix: String,
    sims: Sims,
    config: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}

impl Run {
    fn worker(&self, name: &str) -> Proc {
        let env = [(
            "JST2KD_METRICS__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )];
        Proc::start(name, name, &["--config", &self.config], &env, &self.dir.0)
    }

    async fn reconcile(&self, format: &str) -> std::process::Output {
        let today = common::time::now_beijing();
        let from = (today - chrono::Duration::days(31))
            .format("%Y-%m-%d")
            .to_string();
        let to = today.format("%Y-%m-%d").to_string();
        e2e::run_jst2kd(
            &[
                "reconcile",
                "--config",
                &self.config,
                "--from",
                &from,
                "--to",
                &to,
                "--format",
                format,
            ],
            &[],
        )
        .await
    }

    async fn post_counts(&self, docs: Value) {
        let sent = http()
            .post(format!("{}/_sim/counts", self.sims.jst))
            .json(&docs)
            .send()
            .await
            .unwrap();
        assert!(sent.status().is_success());
    }
}

#[tokio::test]
async fn reconcile_finds_each_kind_of_difference_once() {
    let dir = Scratch::new("reconcile");
    let prefix = format!("jst2kdtest-e2e-reconcile-{}", std::process::id());
    let sims = Sims::start(&dir.0, &["--generate", "40", "--seed", "7"]).await;
    let config = sims.worker_toml(
        &prefix,
        &dir.path("producer.checkpoint.json"),
        &e2e::GENERATED_WAREHOUSES,
        "",
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let run = Run {
        prefix,
        config: path.display().to_string(),
        sims,
        dir,
    };
    let _loader = run.worker("loader");
    let _transformer = run.worker("transformer");
    let _producer = run.worker("producer");

    // Clean: once the pipeline has loaded everything, nothing differs.
    let deadline = Instant::now() + Duration::from_secs(120);
    let clean = loop {
        let out = run.reconcile("text").await;
        if out.status.code() == Some(0) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "never clean:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(text.contains(", 0 differences"), "{text}");
    assert!(
        String::from_utf8_lossy(&clean.stderr).contains("took the request"),
        "read through the running producer:\n{}",
        String::from_utf8_lossy(&clean.stderr)
    );

    // Each kind of difference, on purpose.
    let bills: Vec<Value> = get_json(&http(), &format!("{}/_sim/bills", run.sims.kingdee))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let booked: Vec<(String, String)> = bills
        .iter()
        .map(|b| {
            (
                b["form_id"].as_str().unwrap().to_string(),
                b["bill_no"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Documents with exactly one bill, a loss bill: each change then makes one difference.
    let digits = |no: &str| -> String {
        no.trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect()
    };
    let booked: Vec<(String, String)> = booked
        .iter()
        .filter(|(form, no)| {
            form == "STK_MisDelivery"
                && no.starts_with("JSTPD")
                && booked
                    .iter()
                    .filter(|(_, other)| digits(other) == digits(no))
                    .count()
                    == 1
        })
        .cloned()
        .collect();
    assert!(booked.len() >= 3, "{booked:?}");
    let io_id = |no: &str| no.trim_start_matches("JSTPD").parse::<i64>().unwrap();
    let (deleted, cancelled, changed) = (&booked[0], &booked[1], &booked[2]);
    let gone = http()
        .delete(format!(
            "{}/_sim/bills/{}/{}",
            run.sims.kingdee, deleted.0, deleted.1
        ))
        .send()
        .await
        .unwrap();
    assert!(gone.status().is_success());
    let docs: Vec<Value> = get_json(&http(), &format!("{}/_sim/counts", run.sims.jst))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let doc = |id: i64| {
        docs.iter()
            .find(|d| d["io_id"].as_i64() == Some(id))
            .unwrap()
            .clone()
    };
    let now = common::time::format_beijing(&common::time::now_beijing());
    let mut cancel = doc(io_id(&cancelled.1));
    cancel["status"] = json!("Cancelled");
    cancel["modified"] = json!(now);
    let mut change = doc(io_id(&changed.1));
    change["modified"] = json!(now);
    for item in change["items"].as_array_mut().unwrap() {
        if let Some(q) = item["qty"].as_i64() {
            item["qty"] = json!(q - 1);
        }
        if let Some(obj) = item.as_object_mut() {
            obj.remove("batchs");
        }
    }
    let mut unmapped = doc(io_id(&changed.1));
    unmapped["io_id"] = json!(399_999);
    unmapped["wh_id"] = json!(99);
    unmapped["modified"] = json!(now);
    unmapped["io_date"] = json!(now);
    unmapped["status"] = json!("Confirmed");
    run.post_counts(json!([cancel, change, unmapped])).await;

    // The pipeline meets them: a mapping dead letter and a conflict.
    let broker = e2e::rabbit(&run.prefix, "e2e-reconcile").await;
    let since = chrono::Utc::now() - chrono::Duration::minutes(10);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = outcomes::read(&Broker::Rabbit(broker.clone()), since, |_| true)
            .await
            .unwrap();
        let dead = events
            .iter()
            .any(|o| o.event == OutcomeKind::DeadLettered && o.io_id == Some(399_999));
        let conflict = events
            .iter()
            .any(|o| o.event == OutcomeKind::Conflict && o.io_id == Some(io_id(&changed.1)));
        if dead && conflict {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead letter {dead}, conflict {conflict}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    broker.close().await;

    let out = run.reconcile("json").await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "differences: exit 1\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let found: Vec<(String, String)> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["bill_no"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut wanted = vec![
        ("missing".to_string(), deleted.1.clone()),
        ("missing".to_string(), "JSTPD399999".to_string()),
        ("unexpected".to_string(), cancelled.1.clone()),
        ("different".to_string(), changed.1.clone()),
    ];
    let mut got = found.clone();
    wanted.sort();
    got.sort();
    assert_eq!(got, wanted, "{report:#}");
    let reason = |no: &str| {
        report["differences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["bill_no"] == no)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        reason("JSTPD399999").contains("dead-lettered (mapping)"),
        "{}",
        reason("JSTPD399999")
    );
    assert!(
        reason(&changed.1).contains("conflict"),
        "{}",
        reason(&changed.1)
    );
    assert!(
        reason(&cancelled.1).contains("Cancelled"),
        "{}",
        reason(&cancelled.1)
    );
    assert!(report["totals"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("4 differences (2 missing, 1 unexpected, 1 different)"),
        "the summary on stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
