#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The real clients against the simulators on port 0, and against a misbehaving server
//! (HTTP 5xx, a server that never answers): request shape, errors, timeouts.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use common::config::{Dur, Secret};
use futures_util::StreamExt;
use jst::JstConfig;
use jst::{CountQuery, JstClient, JstError};
use kingdee::KingdeeConfig;
use kingdee::{BillResult, KingdeeClient};
use serde_json::{Value, json};
use sim::jst::{JstCredentials, JstSim};
use sim::kingdee::{KingdeeCredentials, KingdeeSim};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn start(router: Router) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    tokio::spawn(sim::serve(listener, router, cancel.clone()));
    (format!("http://{addr}"), cancel)
}

fn jst_config(base_url: &str, secret: &str) -> JstConfig {
    let c = JstCredentials::default();
    JstConfig {
        base_url: base_url.into(),
        app_key: Secret::new(c.app_key),
        app_secret: Secret::new(secret),
        access_token: Secret::new(c.access_token),
        timeout: Dur::secs(2),
        ..JstConfig::default()
    }
}

fn window() -> CountQuery {
    let now = common::time::now_beijing();
    CountQuery {
        modified_begin: common::time::format_beijing(&(now - chrono::Duration::days(7))),
        modified_end: common::time::format_beijing(&now),
        status: None,
    }
}

#[tokio::test]
async fn the_jst_client_pages_through_a_window() {
    let now = common::time::now_beijing();
    let docs: Vec<Value> = (0..120)
        .map(|i| {
            let m = common::time::format_beijing(&(now - chrono::Duration::minutes(i + 5)));
            json!({"io_id": 1000 + i, "status": if i % 2 == 0 { "Confirmed" } else { "WaitConfirm" }, "modified": m, "items": []})
        })
        .collect();
    let sim = JstSim::new(JstCredentials::default(), docs);
    let (url, _stop) = start(sim.router()).await;
    let client = JstClient::new(
        &jst_config(&url, &JstCredentials::default().app_secret),
        None,
    )
    .expect("client");
    let all = client.count_window(&window()).await.expect("pages");
    assert_eq!(all.len(), 120);
    let mut confirmed = window();
    confirmed.status = Some("Confirmed".into());
    assert_eq!(
        client.count_window(&confirmed).await.expect("pages").len(),
        60
    );
    assert_eq!(sim.stats().get("ok"), Some(&5));
}

#[tokio::test]
async fn a_wrong_jst_secret_is_code_10_a_configuration_error() {
    let sim = JstSim::new(JstCredentials::default(), vec![]);
    let (url, _stop) = start(sim.router()).await;
    let client = JstClient::new(&jst_config(&url, "wrong"), None).expect("client");
    let err = client.count_page(&window(), 1).await.expect_err("refused");
    assert!(matches!(err, JstError::Api { code: 10, .. }), "{err}");
    assert!(err.is_configuration());
}

#[tokio::test]
async fn jst_5xx_and_timeouts_are_transient_errors() {
    let router = Router::new()
        .route(
            jst::COUNT_QUERY_PATH,
            post(|| async { (StatusCode::BAD_GATEWAY, "bad gateway") }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let (url, _stop) = start(router).await;
    // This server has no token service: keep the configured token (its first-call renewal is
    // tested against the simulator).
    let client = JstClient::new(&jst_config(&url, "s"), None)
        .expect("client")
        .without_refresh();
    let err = client.count_page(&window(), 1).await.expect_err("502");
    assert!(
        matches!(err, JstError::Http(502)) && err.is_transient(),
        "{err}"
    );
    let err = client.call("/slow", &json!({})).await.expect_err("timeout");
    assert!(
        matches!(err, JstError::Transport(_)) && err.is_transient(),
        "{err}"
    );
}

fn kingdee_config(base_url: &str, secret: &str) -> KingdeeConfig {
    let c = KingdeeCredentials::default();
    KingdeeConfig {
        base_url: format!("{base_url}/k3cloud"),
        acct_id: Secret::new(c.acct_id),
        user_name: Secret::new(c.user_name),
        app_id: Secret::new(c.app_id),
        app_secret: Secret::new(secret),
        timeout: Dur::secs(2),
        ..KingdeeConfig::default()
    }
}

fn bill(no: &str, stock: Value) -> Value {
    json!({"FBillNo": no, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FStockOrgId": {"FNumber": "100"},
        "FPickOrgId": {"FNumber": "100"}, "FOwnerIdHead": {"FNumber": "100"}, "FOwnerTypeIdHead": "BD_OwnerOrg",
        "FStockDirect": "GENERAL", "FDate": "2026-03-01",
        "FEntity": [{"FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"}, "FBaseUnitId": {"FNumber": "Pcs"},
            "FQty": 1.0, "FStockId": stock}]})
}

#[tokio::test]
async fn the_kingdee_client_saves_bill_by_bill_and_queries() {
    let sim = KingdeeSim::new(KingdeeCredentials::default(), None);
    let (url, _stop) = start(sim.router()).await;
    let client = KingdeeClient::new(
        &kingdee_config(&url, &KingdeeCredentials::default().app_secret),
        1,
        None,
    )
    .expect("client");
    let results = client
        .batch_save(
            "STK_MisDelivery",
            &[
                bill("A1", json!({"FNumber": "CK001"})),
                bill("A2", json!("CK001")),
            ],
        )
        .await
        .expect("answered");
    assert!(
        matches!(results[0], BillResult::Saved { id: Some(_), .. }),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], BillResult::Failed { .. }),
        "a bare string is refused"
    );
    let again = client
        .batch_save(
            "STK_MisDelivery",
            &[bill("A1", json!({"FNumber": "CK001"}))],
        )
        .await
        .expect("answered");
    match &again[0] {
        BillResult::Failed { errors, .. } => {
            assert!(errors.iter().any(kingdee::BillError::is_duplicate_bill_no))
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let rows = client
        .execute_bill_query("STK_MisDelivery", "FBillNo,FDocumentStatus", "FBillNo='A1'")
        .await
        .expect("rows");
    assert_eq!(rows, vec![vec![json!("A1"), json!("A")]]);
    assert_eq!(sim.bills().len(), 1);
}

#[tokio::test]
async fn a_wrong_kingdee_secret_is_refused_and_5xx_and_timeouts_are_transient() {
    let sim = KingdeeSim::new(KingdeeCredentials::default(), None);
    let (url, _stop) = start(sim.router()).await;
    let wrong = KingdeeClient::new(
        &kingdee_config(&url, "ffffffffffffffffffffffffffffffff"),
        1,
        None,
    )
    .expect("client");
    let err = wrong
        .batch_save(
            "STK_MisDelivery",
            &[bill("A1", json!({"FNumber": "CK001"}))],
        )
        .await
        .expect_err("refused");
    assert!(!err.is_transient(), "{err}");
    assert!(sim.bills().is_empty());

    let router = Router::new().route(
        "/k3cloud/{service}",
        post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    );
    let (url, _stop) = start(router).await;
    let client = KingdeeClient::new(&kingdee_config(&url, "s"), 1, None).expect("client");
    let err = client
        .batch_save("STK_MisDelivery", &[json!({})])
        .await
        .expect_err("500");
    assert!(err.is_transient(), "{err}");

    let router = Router::new().route(
        "/k3cloud/{service}",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let (url, _stop) = start(router).await;
    let client = KingdeeClient::new(&kingdee_config(&url, "s"), 1, None).expect("client");
    let err = client
        .batch_save("STK_MisDelivery", &[json!({})])
        .await
        .expect_err("timeout");
    assert!(err.is_transient(), "{err}");
}

/// A server whose every answer is a redirect to `target`.
fn redirecting(target: String) -> Router {
    Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
            )
        }
    })
}

/// A server counting every request it receives.
fn counting(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Router {
    Router::new().fallback(move || {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { "{}" }
    })
}

#[tokio::test]
async fn neither_client_follows_a_redirect_with_the_credentials() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (target, _stop_target) = start(counting(calls.clone())).await;
    let (url, _stop) = start(redirecting(format!("{target}/steal?x=1"))).await;
    let host = target.trim_start_matches("http://");

    let jst = JstClient::new(&jst_config(&url, "s"), None).expect("client");
    let err = jst.count_page(&window(), 1).await.expect_err("redirect");
    assert!(err.is_protocol() && !err.is_transient(), "{err}");
    assert!(err.to_string().contains(host), "{err}");
    assert!(!err.to_string().contains("steal"), "{err}");

    let mut config = kingdee_config(&url, "s");
    config.auth = kingdee::KingdeeAuth::Password;
    config.password = Secret::new("kd-password-SECRET");
    let kingdee = KingdeeClient::new(&config, 1, None).expect("client");
    let err = kingdee.login().await.expect_err("redirect");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains(host), "{err}");
    assert!(!err.to_string().contains("SECRET"), "{err}");
    let err = KingdeeClient::new(&kingdee_config(&url, "s"), 1, None)
        .expect("client")
        .batch_save("STK_MisDelivery", &[json!({})])
        .await
        .expect_err("redirect");
    assert!(err.to_string().contains(host), "{err}");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the redirect target received a request"
    );
}

#[tokio::test]
async fn kingdee_413_is_final() {
    let router = Router::new().route(
        "/k3cloud/{service}",
        post(|| async { (StatusCode::PAYLOAD_TOO_LARGE, "too large") }),
    );
    let (url, _stop) = start(router).await;
    let client = KingdeeClient::new(&kingdee_config(&url, "s"), 1, None).expect("client");
    let err = client
        .batch_save("STK_MisDelivery", &[json!({})])
        .await
        .expect_err("413");
    assert!(
        matches!(err, kingdee::KingdeeError::Http(413)) && !err.is_transient(),
        "{err}"
    );
}

/// A server answering 3 GB of JSON-looking bytes, streamed, with or without a length.
fn endless(with_length: bool) -> Router {
    const CHUNK: usize = 1 << 20;
    const TOTAL: u64 = 3 << 30;
    Router::new().fallback(move || async move {
        let chunks = futures_util::stream::iter(0..TOTAL / CHUNK as u64)
            .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; CHUNK])));
        let mut response = axum::response::Response::new(axum::body::Body::from_stream(chunks));
        if with_length {
            response.headers_mut().insert(
                axum::http::header::CONTENT_LENGTH,
                axum::http::HeaderValue::from(TOTAL),
            );
        }
        response
    })
}

#[tokio::test]
async fn an_answer_over_the_cap_is_refused_without_reading_it_all() {
    for with_length in [false, true] {
        let (url, _stop) = start(endless(with_length)).await;
        let mut config = jst_config(&url, "s");
        config.timeout = Dur::secs(60);
        let jst = JstClient::new(&config, None).expect("client");
        let err = jst.count_page(&window(), 1).await.expect_err("too large");
        assert!(err.is_protocol(), "{err}");
        assert!(err.to_string().contains("larger than"), "{err}");
        let mut config = kingdee_config(&url, "s");
        config.timeout = Dur::secs(60);
        let kingdee = KingdeeClient::new(&config, 1, None).expect("client");
        let err = kingdee
            .batch_save("STK_MisDelivery", &[json!({})])
            .await
            .expect_err("too large");
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}

/// A client of the simulator's default app, with its configured pair and the given kind.
fn token_client(url: &str, kind: jst::AppKind, refresh_token: &str) -> JstClient {
    let c = JstCredentials::default();
    let config = JstConfig {
        app_secret: Secret::new(c.app_secret.clone()),
        refresh_token: Secret::new(refresh_token),
        app_kind: kind,
        rate_per_second: 0,
        rate_per_minute: 0,
        ..jst_config(url, &c.app_secret)
    };
    JstClient::new(&config, None).expect("client")
}

#[tokio::test]
async fn an_own_app_renews_its_token_ahead_of_every_expiry() {
    use sim::jst::JstBehaviour;
    let sim = JstSim::with_behaviour(
        JstCredentials::default(),
        vec![],
        JstBehaviour {
            rate_limit: false,
            token_ttl: Some(Duration::from_secs(2)),
            ..JstBehaviour::default()
        },
    );
    let (url, _stop) = start(sim.router()).await;
    let c = JstCredentials::default();
    let client = token_client(&url, jst::AppKind::Own, &c.refresh_token);
    // Calls for seven seconds: three lifetimes of two seconds.
    let until = std::time::Instant::now() + Duration::from_secs(7);
    let mut calls = 0;
    while std::time::Instant::now() < until {
        client
            .count_page(&window(), 1)
            .await
            .expect("never an error");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = sim.stats();
    let refreshed = stats.get("token_refreshed").copied().unwrap_or(0);
    // The configured pair (age unknown) at the first call, then one per lifetime.
    assert!(
        refreshed >= 4,
        "{refreshed} renewals in {calls} calls: {stats:?}"
    );
    // Renewed ahead: at most a stalled machine's one call meets an expired token (renewed and
    // retried, never an error).
    assert!(
        stats.get("token_expired").copied().unwrap_or(0) <= 1,
        "renewed ahead: {stats:?}"
    );
    assert!(client.tokens().await.expires_at.is_some());
}

#[tokio::test]
async fn an_own_app_whose_refresh_token_died_asks_for_a_first_token_again() {
    let sim = JstSim::new(JstCredentials::default(), vec![]);
    let (url, _stop) = start(sim.router()).await;
    let client = token_client(&url, jst::AppKind::Own, "rt-long-dead");
    sim.expire_tokens();
    client
        .count_page(&window(), 1)
        .await
        .expect("recovered through getInitToken");
    let stats = sim.stats();
    assert_eq!(stats.get("token_issued"), Some(&1), "{stats:?}");
}

#[tokio::test]
async fn an_isv_app_never_refreshes_and_says_the_merchant_must_authorise_again() {
    use sim::jst::JstBehaviour;
    let sim = JstSim::with_behaviour(
        JstCredentials::default(),
        vec![],
        JstBehaviour {
            rate_limit: false,
            isv: true,
            ..JstBehaviour::default()
        },
    );
    let (url, _stop) = start(sim.router()).await;
    let c = JstCredentials::default();
    let client = token_client(&url, jst::AppKind::Isv, &c.refresh_token);
    client
        .count_page(&window(), 1)
        .await
        .expect("the configured token works");
    sim.expire_tokens();
    let err = client.count_page(&window(), 1).await.expect_err("expired");
    assert!(err.is_configuration(), "{err}");
    assert!(err.to_string().contains("authorise the app again"), "{err}");
    let stats = sim.stats();
    assert_eq!(stats.get("token_refreshed"), None, "{stats:?}");
    assert_eq!(
        stats.get("token_refused"),
        None,
        "not even tried: {stats:?}"
    );
    // An own-app client of an ISV app meets code 150 on refresh, with the same advice.
    let own = token_client(&url, jst::AppKind::Own, &c.refresh_token);
    let err = own.count_page(&window(), 1).await.expect_err("150");
    assert!(err.to_string().contains("code 150"), "{err}");
    // The merchant authorises again; the new token, configured, works.
    let (access, refresh) = sim.authorise();
    let config = JstConfig {
        access_token: Secret::new(access),
        refresh_token: Secret::new(refresh),
        app_kind: jst::AppKind::Isv,
        rate_per_second: 0,
        rate_per_minute: 0,
        ..jst_config(&url, &c.app_secret)
    };
    let again = JstClient::new(&config, None).expect("client");
    again
        .count_page(&window(), 1)
        .await
        .expect("authorised again");
}

#[tokio::test]
async fn two_clients_sharing_a_token_file_adopt_each_others_renewal() {
    let sim = JstSim::new(JstCredentials::default(), vec![]);
    let (url, _stop) = start(sim.router()).await;
    let c = JstCredentials::default();
    let file = std::env::temp_dir().join(format!(
        "jst2kd-shared-token-{}.token.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&file);
    // Both built from the same configuration before either renews: producer and backfill.
    let producer = token_client(&url, jst::AppKind::Own, &c.refresh_token)
        .with_token_file(file.clone())
        .expect("producer");
    let backfill = token_client(&url, jst::AppKind::Own, &c.refresh_token)
        .with_token_file(file.clone())
        .expect("backfill");
    producer
        .count_page(&window(), 1)
        .await
        .expect("renewed at the first call");
    backfill
        .count_page(&window(), 1)
        .await
        .expect("adopts the producer's pair from the file");
    producer
        .count_page(&window(), 1)
        .await
        .expect("still valid");
    let stats = sim.stats();
    assert_eq!(stats.get("token_refreshed"), Some(&1), "{stats:?}");
    assert_eq!(
        stats.get("token_issued"),
        None,
        "no getInitToken: {stats:?}"
    );
    assert_eq!(
        producer.tokens().await.access_token,
        backfill.tokens().await.access_token
    );
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn an_isv_token_expiry_given_in_the_configuration_is_shown_and_enforced() {
    let sim = JstSim::new(JstCredentials::default(), vec![]);
    let (url, _stop) = start(sim.router()).await;
    let c = JstCredentials::default();
    let metrics = common::telemetry::Metrics::new(&[common::telemetry::Stage::Producer]);
    let at = common::time::now_beijing() + chrono::Duration::days(5);
    let config = JstConfig {
        app_secret: Secret::new(c.app_secret.clone()),
        refresh_token: Secret::new(c.refresh_token.clone()),
        app_kind: jst::AppKind::Isv,
        access_token_expires_at: Some(at),
        ..jst_config(&url, &c.app_secret)
    };
    let client = JstClient::new(&config, Some(metrics.clone())).expect("client");
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(
        text.contains(&format!(
            "jst2kd_jst_token_expiry_timestamp_seconds{{app_kind=\"isv\"}} {}",
            at.timestamp()
        )),
        "{text}"
    );
    client.count_page(&window(), 1).await.expect("valid");
    let expired = JstConfig {
        access_token_expires_at: Some(common::time::now_beijing() - chrono::Duration::hours(1)),
        ..config
    };
    let err = JstClient::new(&expired, None)
        .expect("client")
        .count_page(&window(), 1)
        .await
        .expect_err("expired");
    assert!(err.to_string().contains("has expired"), "{err}");
    assert_eq!(
        sim.stats().get("ok"),
        Some(&1),
        "the expired token was not even sent"
    );
}
