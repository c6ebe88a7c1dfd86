#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The producer against a Jushuitan that answers what it should not: a success without data,
//! a redirect to another host, paging that never ends. Each must fail the poll with an error
//! naming the cause, leave the checkpoint where it was, and mark the producer not ready; a
//! redirect target must receive nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Form, Router};
use common::config::{Dur, Secret};
use common::queue::AmqpConfig;
use common::queue::memory::MemoryBroker;
use common::queue::{Broker, Topology};
use common::telemetry::{Health, Metrics, Stage};
use jst::JstClient;
use jst::JstConfig;
use producer::{Producer, ProducerError};
use producer::{ProducerConfig, StartAt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A fake Jushuitan whose count query answers with `answer(page_index)`; counts its calls.
async fn fake_jst(
    answer: impl Fn(u64) -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // A configured pair of unknown age is renewed at the first call: the token service
    // answers as the real one does; only the count query is hostile.
    let router = Router::new()
        .route(
            jst::REFRESH_TOKEN_PATH,
            post(|| async {
                json_answer(
                    json!({"code": 0, "msg": "ok", "data": {"access_token": "token-2",
                    "refresh_token": "refresh-2", "expires_in": 2_592_000, "scope": "all"}}),
                )
            }),
        )
        .route(
            jst::COUNT_QUERY_PATH,
            post(move |Form(form): Form<HashMap<String, String>>| {
                let answer = answer.clone();
                let calls = counted.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let biz = form.get("biz").cloned().unwrap_or_default();
                    let page = serde_json::from_str::<Value>(&biz)
                        .ok()
                        .and_then(|b| b["page_index"].as_u64())
                        .unwrap_or(1);
                    answer(page)
                }
            }),
        );
    let url = sim::spawn_local(router, CancellationToken::new())
        .await
        .expect("serve");
    (url, calls)
}

fn json_answer(value: Value) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn doc(io_id: i64) -> Value {
    json!({"io_id": io_id, "status": "Confirmed", "io_date": "2026-11-01 10:00:00",
        "modified": "2026-11-01 10:00:00", "wh_id": 1, "wms_co_id": 0, "items": []})
}

struct Setup {
    dir: PathBuf,
    producer: Producer,
}

impl Setup {
    fn new(test: &str, url: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("jst2kd-hostile-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let jst = JstConfig {
            base_url: url.to_string(),
            app_key: Secret::new("key-SECRET"),
            app_secret: Secret::new("secret"),
            access_token: Secret::new("token-SECRET"),
            refresh_token: Secret::new("refresh-SECRET"),
            rate_per_second: 0,
            rate_per_minute: 0,
            timeout: Dur::secs(5),
            ..JstConfig::default()
        };
        let client = JstClient::new(&jst, None).expect("client");
        let config = ProducerConfig {
            start_at: StartAt::Ago(Duration::from_secs(86_400)),
            lag: Dur::secs(0),
            poll_interval: Dur::secs(1),
            statuses: vec!["Confirmed".into()],
            checkpoint: dir.join("producer.checkpoint.json"),
            ..ProducerConfig::default()
        };
        let broker = Broker::Memory(MemoryBroker::new(Topology::from_config(
            &AmqpConfig::default(),
        )));
        let producer = Producer::new(client, broker, config, Metrics::new(&[Stage::Producer]));
        Self { dir, producer }
    }

    fn checkpoint(&self) -> PathBuf {
        self.dir.join("producer.checkpoint.json")
    }

    /// Runs the producer until it reports itself not ready (or the deadline passes).
    async fn becomes_not_ready(&self) -> bool {
        let health = Health::new();
        health.set_ready(true);
        let cancel = CancellationToken::new();
        let run = self.producer.run(&cancel, &health, None);
        tokio::pin!(run);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::select! {
                _ = &mut run => return false,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if !health.is_ready() {
                cancel.cancel();
                let _ = run.await;
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn protocol_error(result: Result<producer::PollReport, ProducerError>) -> String {
    match result {
        Err(ProducerError::Jst(e)) if e.is_protocol() => e.to_string(),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_success_without_data_is_an_error_not_an_empty_window() {
    for (name, answer) in [
        ("no-data", json!({"code": 0, "msg": "ok"})),
        ("null-data", json!({"code": 0, "msg": "ok", "data": null})),
        (
            "no-datas",
            json!({"code": 0, "msg": "ok", "data": {"has_next": false}}),
        ),
    ] {
        let (url, _) = fake_jst(move |_| json_answer(answer.clone())).await;
        let s = Setup::new(name, &url);
        let err = protocol_error(s.producer.poll_once().await);
        assert!(err.contains("without"), "{name}: {err}");
        assert!(!s.checkpoint().exists(), "{name}: the checkpoint moved");
        assert!(s.becomes_not_ready().await, "{name}: still ready");
        assert!(!s.checkpoint().exists(), "{name}: the checkpoint moved");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_its_target_receives_nothing() {
    let (target, target_calls) =
        fake_jst(|_| json_answer(json!({"code": 0, "data": {"has_next": false, "datas": []}})))
            .await;
    let location = format!("{target}{}", jst::COUNT_QUERY_PATH);
    let (url, _) = fake_jst(move |_| {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, location.parse().expect("location"));
        (StatusCode::TEMPORARY_REDIRECT, headers).into_response()
    })
    .await;
    let s = Setup::new("redirect", &url);
    let err = protocol_error(s.producer.poll_once().await);
    let host = target.trim_start_matches("http://");
    assert!(err.contains("307") && err.contains(host), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    assert_eq!(
        target_calls.load(Ordering::SeqCst),
        0,
        "the target got a call"
    );
    assert!(!s.checkpoint().exists());
    assert!(s.becomes_not_ready().await);
    assert_eq!(
        target_calls.load(Ordering::SeqCst),
        0,
        "the target got a call"
    );
}

#[tokio::test]
async fn paging_that_never_ends_stops_with_an_error() {
    // The same page again and again, always "more follow".
    let (url, calls) = fake_jst(|_| {
        json_answer(json!({"code": 0, "data": {"has_next": true, "datas": [doc(1), doc(2)]}}))
    })
    .await;
    let s = Setup::new("same-page", &url);
    let err = protocol_error(s.producer.poll_once().await);
    assert!(err.contains("same documents as page 1"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(!s.checkpoint().exists());
    assert!(s.becomes_not_ready().await);

    // New documents on every page, past the page count it states.
    let (url, calls) = fake_jst(|page| {
        let page = page as i64;
        json_answer(
            json!({"code": 0, "data": {"has_next": true, "page_count": 3,
            "data_count": 6, "datas": [doc(page * 10), doc(page * 10 + 1)]}}),
        )
    })
    .await;
    let s = Setup::new("past-count", &url);
    let err = protocol_error(s.producer.poll_once().await);
    assert!(err.contains("page 4") && err.contains("3 page"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(!s.checkpoint().exists());

    // An empty page that says more follow.
    let (url, _) =
        fake_jst(|_| json_answer(json!({"code": 0, "data": {"has_next": true, "datas": []}})))
            .await;
    let s = Setup::new("empty-more", &url);
    let err = protocol_error(s.producer.poll_once().await);
    assert!(err.contains("empty page 1"), "{err}");
    assert!(!s.checkpoint().exists());
}

#[tokio::test]
async fn a_good_answer_still_moves_the_checkpoint() {
    let (url, _) = fake_jst(|page| {
        let datas = if page == 1 {
            json!([doc(1), doc(2)])
        } else {
            json!([doc(3)])
        };
        json_answer(
            json!({"code": 0, "data": {"has_next": page == 1, "page_count": 2,
            "data_count": 3, "datas": datas}}),
        )
    })
    .await;
    let s = Setup::new("good", &url);
    let report = s.producer.poll_once().await.expect("poll");
    assert_eq!(report.fetched, 3);
    assert!(s.checkpoint().exists());
}
