#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Every refusal of the Jushuitan simulator, with the platform's codes, driven over HTTP with
//! hand-signed requests (not through our client, so a client bug cannot hide a simulator bug).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sim::jst::{JstBehaviour, JstCredentials, JstSim};
use tokio_util::sync::CancellationToken;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn window_biz() -> Value {
    let end = common::time::now_beijing();
    json!({"page_index": 1, "page_size": 50,
        "modified_begin": common::time::format_beijing(&(end - chrono::Duration::days(1))),
        "modified_end": common::time::format_beijing(&end)})
}

struct Call {
    params: BTreeMap<String, String>,
    secret: String,
}

impl Call {
    fn business(biz: &Value) -> Self {
        let c = JstCredentials::default();
        let mut params = BTreeMap::new();
        for (k, v) in [
            ("app_key", c.app_key.clone()),
            ("access_token", c.access_token.clone()),
            ("timestamp", now().to_string()),
            ("version", "2".into()),
            ("charset", "utf-8".into()),
            ("biz", biz.to_string()),
        ] {
            params.insert(k.to_string(), v);
        }
        Self {
            params,
            secret: c.app_secret,
        }
    }
    fn set(mut self, k: &str, v: &str) -> Self {
        self.params.insert(k.into(), v.into());
        self
    }
    fn without(mut self, k: &str) -> Self {
        self.params.remove(k);
        self
    }
    fn secret(mut self, s: &str) -> Self {
        self.secret = s.into();
        self
    }
    async fn send(self, url: &str, path: &str) -> (u16, String) {
        let mut params = self.params;
        let sign = jst::sign::sign(&self.secret, &params);
        params.insert("sign".into(), sign);
        let r = reqwest::Client::new()
            .post(format!("{url}{path}"))
            .form(&params)
            .send()
            .await
            .expect("answer");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }
}

fn code(body: &str) -> i64 {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_i64())
        .unwrap_or(-1)
}

async fn start(behaviour: JstBehaviour) -> (JstSim, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = JstSim::with_behaviour(
        JstCredentials::default(),
        sim::jst::generate(60, 3),
        behaviour,
    );
    let url = sim::spawn_local(sim.router(), CancellationToken::new())
        .await
        .expect("serve");
    (sim, url)
}

const Q: &str = jst::COUNT_QUERY_PATH;

#[tokio::test]
async fn signature_timestamp_token_and_parameters_are_checked() {
    let (_sim, url) = start(JstBehaviour {
        rate_limit: false,
        ..JstBehaviour::default()
    })
    .await;
    let biz = window_biz();
    let (_, ok) = Call::business(&biz).send(&url, Q).await;
    assert_eq!(code(&ok), 0, "{ok}");
    let cases: Vec<(Call, i64, &str)> = vec![
        (Call::business(&biz).secret("wrong"), 10, "wrong secret"),
        (
            Call::business(&biz).set("app_key", "other"),
            10,
            "unknown app",
        ),
        (
            Call::business(&biz).set("timestamp", &(now() - 3600).to_string()),
            180,
            "old timestamp",
        ),
        (
            Call::business(&biz).set("access_token", "stale"),
            100,
            "bad token",
        ),
        (Call::business(&biz).without("biz"), 130, "no biz"),
        (
            Call::business(
                &json!({"page_index": 1, "page_size": 51, "modified_begin": biz["modified_begin"], "modified_end": biz["modified_end"]}),
            ),
            140,
            "page size",
        ),
        (
            Call::business(
                &json!({"page_index": 1, "modified_begin": "2026-01-01 00:00:00", "modified_end": "2026-01-09 00:00:00"}),
            ),
            140,
            "window over 7 days",
        ),
        (
            Call::business(&json!({"page_index": 1, "modified_begin": "2026-01-01 00:00:00"})),
            140,
            "one end only",
        ),
        (
            Call::business(&json!({"page_index": 1})),
            140,
            "neither window nor ids",
        ),
        (
            Call::business(
                &json!({"page_index": 1, "io_ids": (1..=51).map(|i| i.to_string()).collect::<Vec<_>>().join(",")}),
            ),
            140,
            "too many ids",
        ),
        (
            Call::business(&json!({"page_index": 9_000_000_000_000_000_000u64, "io_ids": "1"})),
            140,
            "absurd page",
        ),
    ];
    for (call, expected, what) in cases {
        let (status, body) = call.send(&url, Q).await;
        assert_eq!((status, code(&body)), (200, expected), "{what}: {body}");
    }
}

#[tokio::test]
async fn paging_is_stable_and_reports_counts() {
    let (_sim, url) = start(JstBehaviour {
        rate_limit: false,
        ..JstBehaviour::default()
    })
    .await;
    let mut biz = window_biz();
    biz["modified_begin"] = json!(common::time::format_beijing(
        &(common::time::now_beijing() - chrono::Duration::days(7))
    ));
    biz["page_size"] = json!(5);
    let (_, first) = Call::business(&biz).send(&url, Q).await;
    let (_, again) = Call::business(&biz).send(&url, Q).await;
    assert_eq!(first, again, "the same page twice");
    let v: Value = serde_json::from_str(&first).unwrap();
    let count = v["data"]["data_count"].as_u64().unwrap();
    assert_eq!(v["data"]["page_count"].as_u64().unwrap(), count.div_ceil(5));
    assert_eq!(v["data"]["has_next"], json!(count > 5));
}

/// Every page of a window asked with `status`, as (io_id, status) in paging order.
async fn paged(url: &str, status: Option<&str>) -> (u64, Vec<(i64, String)>) {
    let mut biz = window_biz();
    biz["modified_begin"] = json!(common::time::format_beijing(
        &(common::time::now_beijing() - chrono::Duration::days(6))
    ));
    biz["page_size"] = json!(7);
    if let Some(s) = status {
        biz["status"] = json!(s);
    }
    let (mut seen, mut count) = (Vec::new(), 0);
    for page in 1.. {
        biz["page_index"] = json!(page);
        let (_, body) = Call::business(&biz).send(url, Q).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        count = v["data"]["data_count"].as_u64().unwrap();
        for d in v["data"]["datas"].as_array().unwrap() {
            seen.push((
                d["io_id"].as_i64().unwrap(),
                d["status"].as_str().unwrap().to_string(),
            ));
        }
        if v["data"]["has_next"] != json!(true) {
            break;
        }
    }
    (count, seen)
}

#[tokio::test]
async fn a_status_reads_the_same_documents_as_a_filter_of_all_of_them() {
    let (sim, url) = start(JstBehaviour {
        rate_limit: false,
        ..JstBehaviour::default()
    })
    .await;
    let (all_count, all) = paged(&url, None).await;
    assert_eq!(all_count as usize, all.len());
    let confirmed: Vec<(i64, String)> = all
        .iter()
        .filter(|(_, s)| s == "Confirmed")
        .cloned()
        .collect();
    assert!(
        confirmed.len() > 5,
        "the generator gives confirmed documents"
    );
    assert_eq!(
        paged(&url, Some("Confirmed")).await,
        (confirmed.len() as u64, confirmed.clone())
    );

    // A confirmed document cancelled (and modified) leaves the status; another one joins it.
    let mut docs = sim.all();
    let leaving = docs
        .iter_mut()
        .find(|d| d["io_id"].as_i64() == Some(confirmed[0].0))
        .unwrap();
    leaving["status"] = json!("Cancelled");
    let leaving = leaving.clone();
    let mut joining = docs
        .iter()
        .find(|d| d["status"] == "WaitConfirm")
        .unwrap()
        .clone();
    joining["status"] = json!("Confirmed");
    joining["modified"] = json!(common::time::format_beijing(
        &(common::time::now_beijing() - chrono::Duration::hours(2))
    ));
    sim.put(vec![leaving.clone(), joining.clone()]);
    let (count, now) = paged(&url, Some("Confirmed")).await;
    assert_eq!(count as usize, now.len());
    assert!(
        !now.iter()
            .any(|(id, _)| Some(*id) == leaving["io_id"].as_i64())
    );
    assert_eq!(
        now.last().map(|(id, _)| *id),
        joining["io_id"].as_i64(),
        "last modified, last paged"
    );
    assert_eq!(now.len(), confirmed.len());
    let (_, cancelled) = paged(&url, Some("Cancelled")).await;
    assert!(
        cancelled
            .iter()
            .any(|(id, _)| Some(*id) == leaving["io_id"].as_i64())
    );
}

#[tokio::test]
async fn the_sliding_limits_answer_199_and_200() {
    let (sim, url) = start(JstBehaviour {
        per_second: 2,
        per_minute: 3,
        ..JstBehaviour::default()
    })
    .await;
    let biz = window_biz();
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(code(&Call::business(&biz).send(&url, Q).await.1));
    }
    assert_eq!(codes, vec![0, 0, 199], "two a second");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    codes.clear();
    for _ in 0..2 {
        codes.push(code(&Call::business(&biz).send(&url, Q).await.1));
    }
    assert_eq!(codes, vec![0, 200], "three a minute");
    assert_eq!(sim.stats().get("rate_limited"), Some(&2));
}

#[tokio::test]
async fn faults_are_injected_at_the_configured_rate() {
    let (sim, url) = start(JstBehaviour {
        rate_limit: false,
        fail_rate: 1.0,
        ..JstBehaviour::default()
    })
    .await;
    let biz = window_biz();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (status, body) = Call::business(&biz).send(&url, Q).await;
        seen.insert(match (status, code(&body)) {
            (502, _) => "502",
            (200, 199) => "199",
            (200, -1) => "truncated",
            other => panic!("not an injected fault: {other:?} {body}"),
        });
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(sim.stats().keys().any(|k| k.starts_with("fault_")));
}

#[tokio::test]
async fn tokens_are_issued_refreshed_and_expire() {
    let (sim, url) = start(JstBehaviour {
        rate_limit: false,
        token_ttl: Some(Duration::from_secs(1)),
        ..JstBehaviour::default()
    })
    .await;
    let biz = window_biz();
    let c = JstCredentials::default();
    let token_call = |extra: &[(&str, &str)]| {
        let mut call = Call {
            params: BTreeMap::new(),
            secret: c.app_secret.clone(),
        };
        for (k, v) in [("app_key", c.app_key.as_str()), ("charset", "utf-8")] {
            call = call.set(k, v);
        }
        call = call.set("timestamp", &now().to_string());
        for (k, v) in extra {
            call = call.set(k, v);
        }
        call
    };
    let (_, body) = token_call(&[("grant_type", "authorization_code"), ("code", "12345")])
        .send(&url, jst::INIT_TOKEN_PATH)
        .await;
    assert_eq!(code(&body), 140, "code must be 6 characters");
    let (_, body) = token_call(&[("grant_type", "authorization_code"), ("code", "123456")])
        .send(&url, jst::INIT_TOKEN_PATH)
        .await;
    let data: Value = serde_json::from_str::<Value>(&body).unwrap()["data"].clone();
    let access = data["access_token"].as_str().unwrap().to_string();
    let refresh = data["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(data["expires_in"], 1);
    let (_, body) = Call::business(&biz)
        .set("access_token", &access)
        .send(&url, Q)
        .await;
    assert_eq!(code(&body), 0, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, body) = Call::business(&biz)
        .set("access_token", &access)
        .send(&url, Q)
        .await;
    assert_eq!(code(&body), 100, "expired: {body}");
    let (_, body) = token_call(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", "wrong"),
        ("scope", "all"),
    ])
    .send(&url, jst::REFRESH_TOKEN_PATH)
    .await;
    assert_eq!(code(&body), 100, "{body}");
    let (_, body) = token_call(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("scope", "all"),
    ])
    .send(&url, jst::REFRESH_TOKEN_PATH)
    .await;
    let new_access = serde_json::from_str::<Value>(&body).unwrap()["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_access, access);
    assert_eq!(sim.access_token(), new_access);
}
