#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Kingdee sessions: LoginBySign and ValidateUser, re-login and one resend when the session is
//! lost, a session per concurrent call, and the simulator serving one call at a time per session.

use std::time::{Duration, Instant};

use common::config::Secret;

use kingdee::{BillResult, KingdeeClient, KingdeeError};
use kingdee::{KingdeeAuth, KingdeeConfig};
use serde_json::{Value, json};
use sim::kingdee::{KingdeeBehaviour, KingdeeCredentials, KingdeeSim};
use tokio_util::sync::CancellationToken;

async fn start(behaviour: KingdeeBehaviour) -> (KingdeeSim, String) {
    let sim = KingdeeSim::with_behaviour(KingdeeCredentials::default(), None, behaviour);
    let url = sim::spawn_local(sim.router(), CancellationToken::new())
        .await
        .expect("serve");
    (sim, format!("{url}/k3cloud"))
}

fn config(url: &str, auth: KingdeeAuth, password: &str) -> KingdeeConfig {
    let c = KingdeeCredentials::default();
    KingdeeConfig {
        base_url: url.into(),
        auth,
        acct_id: Secret::new(c.acct_id),
        user_name: Secret::new(c.user_name),
        app_id: Secret::new(c.app_id),
        app_secret: Secret::new(c.app_secret),
        password: Secret::new(password),
        ..KingdeeConfig::default()
    }
}

fn bill(no: &str) -> Value {
    json!({"FBillNo": no, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FStockOrgId": {"FNumber": "100"},
        "FPickOrgId": {"FNumber": "100"}, "FOwnerIdHead": {"FNumber": "100"}, "FDate": "2026-03-01",
        "FEntity": [{"FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"}, "FQty": 1.0, "FStockId": {"FNumber": "CK001"}}]})
}

#[tokio::test]
async fn both_session_logins_work_and_a_lost_session_is_renewed_once() {
    for auth in [KingdeeAuth::LoginBySign, KingdeeAuth::Password] {
        let (sim, url) = start(KingdeeBehaviour::default()).await;
        let client =
            KingdeeClient::new(&config(&url, auth, "local-password"), 1, None).expect("client");
        let r = client
            .batch_save("STK_MisDelivery", &[bill("S1")])
            .await
            .expect("saved");
        assert!(matches!(r[0], BillResult::Saved { .. }), "{auth:?}: {r:?}");
        sim.expire_sessions();
        let r = client
            .batch_save("STK_MisDelivery", &[bill("S2")])
            .await
            .expect("saved after re-login");
        assert!(matches!(r[0], BillResult::Saved { .. }), "{auth:?}: {r:?}");
        sim.expire_sessions();
        let rows = client
            .execute_bill_query("STK_MisDelivery", "FBillNo", "")
            .await
            .expect("query after re-login");
        assert_eq!(rows.len(), 2);
        assert_eq!(sim.bills().len(), 2);
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_configuration_error() {
    let (sim, url) = start(KingdeeBehaviour::default()).await;
    let client =
        KingdeeClient::new(&config(&url, KingdeeAuth::Password, "wrong"), 1, None).expect("client");
    let err = client
        .batch_save("STK_MisDelivery", &[bill("S1")])
        .await
        .expect_err("refused");
    assert!(
        matches!(err, KingdeeError::Refused { .. }) && !err.is_transient(),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "the password is not repeated: {err}"
    );
    assert!(sim.bills().is_empty());
}

#[tokio::test]
async fn parallel_calls_use_sessions_of_their_own_and_one_session_is_served_one_call_at_a_time() {
    let latency = Duration::from_millis(300);
    let (sim, url) = start(KingdeeBehaviour {
        latency,
        ..KingdeeBehaviour::default()
    })
    .await;
    let client =
        KingdeeClient::new(&config(&url, KingdeeAuth::LoginBySign, ""), 3, None).expect("client");
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..3 {
        let client = client.clone();
        calls.spawn(async move {
            client
                .batch_save("STK_MisDelivery", &[bill(&format!("P{i}"))])
                .await
        });
    }
    while let Some(r) = calls.join_next().await {
        assert!(matches!(
            r.expect("task").expect("saved")[0],
            BillResult::Saved { .. }
        ));
    }
    assert!(
        started.elapsed() < latency * 3,
        "three sessions in parallel: {:?}",
        started.elapsed()
    );

    // Two calls on one session queue up behind each other.
    let sid = client.login().await.expect("session");
    let started = Instant::now();
    let post = || {
        let (url, sid) = (url.clone(), sid.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{url}/Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.ExecuteBillQuery.common.kdsvc"))
                .header("kdservice-sessionid", sid)
                .json(&json!({"parameters": [json!({"FormId": "STK_MisDelivery", "FieldKeys": "FBillNo"}).to_string()]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    let (a, b) = tokio::join!(post(), post());
    assert_eq!((a.unwrap(), b.unwrap()), (200, 200));
    assert!(
        started.elapsed() >= latency * 2,
        "one call at a time per session: {:?}",
        started.elapsed()
    );
    assert_eq!(sim.bills().len(), 3);
}
