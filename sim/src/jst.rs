//! The Jushuitan simulator: `/open/inventory/count/query` with the real signature, timestamp and
//! token checks, `biz` validation and stable paging, plus `/_sim/` hooks for tests.
//!
//! Documents are served in a stable order (`modified`, then `io_id`), so paging is
//! deterministic; the window filters on `modified` like the real service.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, FixedOffset};
use common::messages::{int_field, text_field};
use common::time::{format_beijing, now_beijing, parse_beijing};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Credentials the simulator accepts.
#[derive(Clone)]
pub struct JstCredentials {
    /// `app_key`.
    pub app_key: String,
    /// `app_secret`.
    pub app_secret: String,
    /// The access token valid at start.
    pub access_token: String,
    /// The refresh token valid at start.
    pub refresh_token: String,
}

impl Default for JstCredentials {
    /// The defaults of `config/local.toml`.
    fn default() -> Self {
        Self {
            app_key: "local-app-key".into(),
            app_secret: "local-app-secret".into(),
            access_token: "local-access-token".into(),
            refresh_token: "local-refresh-token".into(),
        }
    }
}

/// How the simulator behaves beyond its data.
#[derive(Clone, Debug)]
pub struct JstBehaviour {
    /// Enforce the per-app limits (codes 199 and 200).
    pub rate_limit: bool,
    /// Calls allowed in any sliding second.
    pub per_second: usize,
    /// Calls allowed in any sliding minute.
    pub per_minute: usize,
    /// Share of business calls that fail (HTTP 502, a truncated body or code 199).
    pub fail_rate: f64,
    /// Lifetime of access tokens (None: they never expire).
    pub token_ttl: Option<Duration>,
    /// A service provider's app: refreshToken answers code 150 and getInitToken (for a
    /// merchant's own app only) is refused.
    pub isv: bool,
    /// Seed of the fault injection.
    pub seed: u64,
}

impl Default for JstBehaviour {
    fn default() -> Self {
        Self {
            rate_limit: true,
            per_second: 5,
            per_minute: 100,
            fail_rate: 0.0,
            token_ttl: None,
            isv: false,
            seed: 1,
        }
    }
}

/// Largest timestamp skew accepted (the platform's 10 minutes).
const MAX_SKEW_SECS: i64 = 600;

/// The count query's path (库存盘点查询), as the open platform serves it.
pub const COUNT_QUERY_PATH: &str = "/open/inventory/count/query";
/// A merchant's own app gets its first token here.
pub const INIT_TOKEN_PATH: &str = "/openWeb/auth/getInitToken";
/// Tokens are refreshed here.
pub const REFRESH_TOKEN_PATH: &str = "/openWeb/auth/refreshToken";
/// `expires_in` of tokens that do not expire.
const LONG_TOKEN_SECS: u64 = 30 * 86_400;

struct Tokens {
    access: String,
    refresh: String,
    issued: Instant,
    generation: u64,
}

/// Where a document is in paging order: `modified`, then `io_id`.
type Key = (Option<DateTime<FixedOffset>>, i64);

/// Documents in the order the platform pages them, and the same order by status: a page
/// asked with a status reads only that status's keys, not every document of the window
/// (a window is paged many times, and each page counts its matches).
#[derive(Default)]
struct Docs {
    sorted: BTreeMap<Key, Value>,
    key_of: HashMap<i64, (Key, Option<String>)>,
    by_status: HashMap<String, std::collections::BTreeSet<Key>>,
}

struct Inner {
    creds: JstCredentials,
    behaviour: JstBehaviour,
    docs: Mutex<Docs>,
    stats: Mutex<BTreeMap<String, u64>>,
    tokens: Mutex<Tokens>,
    calls: Mutex<VecDeque<Instant>>,
    rng: Mutex<StdRng>,
}

/// A running simulator's state; clones share it.
#[derive(Clone)]
pub struct JstSim {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JstSim {
    /// A simulator holding `docs`, with the default behaviour (rate limits on, no faults).
    pub fn new(creds: JstCredentials, docs: Vec<Value>) -> Self {
        Self::with_behaviour(creds, docs, JstBehaviour::default())
    }

    /// A simulator with the given behaviour.
    pub fn with_behaviour(
        creds: JstCredentials,
        docs: Vec<Value>,
        behaviour: JstBehaviour,
    ) -> Self {
        let tokens = Tokens {
            access: creds.access_token.clone(),
            refresh: creds.refresh_token.clone(),
            issued: Instant::now(),
            generation: 0,
        };
        let sim = Self {
            inner: Arc::new(Inner {
                rng: Mutex::new(StdRng::seed_from_u64(behaviour.seed)),
                creds,
                behaviour,
                docs: Mutex::new(Docs::default()),
                stats: Mutex::new(BTreeMap::new()),
                tokens: Mutex::new(tokens),
                calls: Mutex::new(VecDeque::new()),
            }),
        };
        sim.put(docs);
        sim
    }

    fn docs(&self) -> MutexGuard<'_, Docs> {
        lock(&self.inner.docs)
    }

    /// Adds or replaces documents (by `io_id`); returns how many were taken.
    pub fn put(&self, docs: Vec<Value>) -> usize {
        let mut held = self.docs();
        let mut n = 0;
        for doc in docs {
            if let Some(id) = int_field(doc.get("io_id")) {
                let modified = text_field(doc.get("modified")).and_then(|m| parse_beijing(&m));
                let key = (modified, id);
                let status = doc
                    .get("status")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let Some((old, old_status)) = held.key_of.insert(id, (key, status.clone())) {
                    held.sorted.remove(&old);
                    if let Some(keys) = old_status.and_then(|s| held.by_status.get_mut(&s)) {
                        keys.remove(&old);
                    }
                }
                if let Some(status) = status {
                    held.by_status.entry(status).or_default().insert(key);
                }
                held.sorted.insert(key, doc);
                n += 1;
            }
        }
        n
    }

    /// Every document held, in paging order.
    pub fn all(&self) -> Vec<Value> {
        self.docs().sorted.values().cloned().collect()
    }

    fn count(&self, outcome: &str) {
        *lock(&self.inner.stats)
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Request counts by outcome.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.stats).clone()
    }

    /// The access token valid now.
    pub fn access_token(&self) -> String {
        lock(&self.inner.tokens).access.clone()
    }

    /// The merchant authorises the app again: a new pair, as the authorisation callback
    /// hands it over (access token, refresh token).
    pub fn authorise(&self) -> (String, String) {
        let pair = self.issue_tokens();
        let text = |k: &str| pair[k].as_str().unwrap_or_default().to_string();
        (text("access_token"), text("refresh_token"))
    }

    /// Makes the current access token invalid (as if it had expired).
    pub fn expire_tokens(&self) {
        let mut t = lock(&self.inner.tokens);
        t.generation += 1;
        t.access = format!("expired-{}-{}", t.generation, t.access);
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(COUNT_QUERY_PATH, post(count_query))
            .route(INIT_TOKEN_PATH, post(init_token))
            .route(REFRESH_TOKEN_PATH, post(refresh_token))
            .route("/_sim/counts", post(put_counts).get(get_counts))
            .route("/_sim/stats", get(get_stats))
            .route("/_sim/expire-tokens", post(expire_tokens))
            .with_state(self.clone())
    }

    /// Admits one call under the sliding limits, or names the limit it breaks.
    fn admit(&self) -> Result<(), (i64, &'static str)> {
        let b = &self.inner.behaviour;
        if !b.rate_limit {
            return Ok(());
        }
        let now = Instant::now();
        let mut calls = lock(&self.inner.calls);
        while calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            calls.pop_front();
        }
        let last_second = calls
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < Duration::from_secs(1))
            .count();
        if last_second >= b.per_second {
            return Err((199, "调用太频繁，请稍后再试"));
        }
        if calls.len() >= b.per_minute {
            return Err((200, "调用频次超过限制"));
        }
        calls.push_back(now);
        Ok(())
    }

    /// A fault to inject into this business call, if the dice say so.
    fn fault(&self) -> Option<Fault> {
        let b = &self.inner.behaviour;
        if b.fail_rate <= 0.0 {
            return None;
        }
        let mut rng = lock(&self.inner.rng);
        if rng.random::<f64>() >= b.fail_rate {
            return None;
        }
        Some(match rng.random_range(0..3) {
            0 => Fault::BadGateway,
            1 => Fault::Truncated,
            _ => Fault::TooFast,
        })
    }

    fn token_valid(&self, token: &str) -> bool {
        let t = lock(&self.inner.tokens);
        t.access == token
            && self
                .inner
                .behaviour
                .token_ttl
                .is_none_or(|ttl| t.issued.elapsed() < ttl)
    }

    fn issue_tokens(&self) -> Value {
        let mut t = lock(&self.inner.tokens);
        t.generation += 1;
        let n: u64 = lock(&self.inner.rng).random();
        t.access = format!("at-{}-{n:016x}", t.generation);
        t.refresh = format!("rt-{}-{n:016x}", t.generation);
        t.issued = Instant::now();
        let expires_in = self
            .inner
            .behaviour
            .token_ttl
            .map_or(LONG_TOKEN_SECS, |d| d.as_secs().max(1));
        json!({"access_token": t.access, "refresh_token": t.refresh, "expires_in": expires_in, "scope": "all"})
    }
}

/// An injected failure.
enum Fault {
    BadGateway,
    Truncated,
    TooFast,
}

fn fail(code: i64, msg: &str) -> Json<Value> {
    Json(json!({"code": code, "msg": msg, "data": null}))
}

/// Checks app key, signature and timestamp of any call; `Err` is the answer to send.
fn check_signature(
    sim: &JstSim,
    params: &HashMap<String, String>,
    required: &[&str],
) -> Result<(), Json<Value>> {
    for name in required
        .iter()
        .chain(&["app_key", "timestamp", "sign", "charset"])
    {
        if params.get(*name).is_none_or(String::is_empty) {
            return Err(fail(130, &format!("缺少参数 {name}")));
        }
    }
    let creds = &sim.inner.creds;
    if params.get("app_key") != Some(&creds.app_key) {
        return Err(fail(10, "验证失败！无效签名"));
    }
    if params.get("sign") != Some(&crate::sign::jst_expected_sign(&creds.app_secret, params)) {
        return Err(fail(10, "验证失败！无效签名"));
    }
    let timestamp: i64 = params
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if (now_beijing().timestamp() - timestamp).abs() > MAX_SKEW_SECS {
        return Err(fail(180, "时间戳超出允许范围"));
    }
    Ok(())
}

/// Checks a business call's common parameters and token; `Err` is the answer to send.
fn authenticate(sim: &JstSim, params: &HashMap<String, String>) -> Result<(), Json<Value>> {
    check_signature(sim, params, &["biz", "version", "access_token"])?;
    if !sim.token_valid(params.get("access_token").map_or("", String::as_str)) {
        sim.count("token_expired");
        return Err(fail(100, "access_token已过期或无效"));
    }
    Ok(())
}

async fn init_token(
    State(sim): State<JstSim>,
    Form(params): Form<HashMap<String, String>>,
) -> Json<Value> {
    if let Err(answer) = check_signature(&sim, &params, &["grant_type", "code"]) {
        sim.count("token_refused");
        return answer;
    }
    if sim.inner.behaviour.isv {
        sim.count("token_refused");
        return fail(140, "服务商应用不能使用getInitToken，请商户授权");
    }
    if params.get("grant_type").map(String::as_str) != Some("authorization_code")
        || params.get("code").is_none_or(|c| c.chars().count() != 6)
    {
        sim.count("token_refused");
        return fail(140, "grant_type 或 code 不合法");
    }
    sim.count("token_issued");
    Json(json!({"code": 0, "msg": "执行成功", "data": sim.issue_tokens()}))
}

async fn refresh_token(
    State(sim): State<JstSim>,
    Form(params): Form<HashMap<String, String>>,
) -> Json<Value> {
    if let Err(answer) = check_signature(&sim, &params, &["grant_type", "refresh_token", "scope"]) {
        sim.count("token_refused");
        return answer;
    }
    if sim.inner.behaviour.isv {
        sim.count("token_refused");
        return fail(150, "服务商应用禁止刷新access_token,需商户重新授权");
    }
    let current = lock(&sim.inner.tokens).refresh.clone();
    if params.get("grant_type").map(String::as_str) != Some("refresh_token")
        || params.get("refresh_token") != Some(&current)
    {
        sim.count("token_refused");
        return fail(100, "refresh_token无效");
    }
    sim.count("token_refreshed");
    Json(json!({"code": 0, "msg": "执行成功", "data": sim.issue_tokens()}))
}

async fn expire_tokens(State(sim): State<JstSim>) -> Json<Value> {
    sim.expire_tokens();
    Json(json!({"expired": true}))
}

/// The validated `biz` of a count query.
struct Query {
    page_index: usize,
    page_size: usize,
    window: Option<(DateTime<FixedOffset>, DateTime<FixedOffset>)>,
    io_ids: Option<Vec<i64>>,
    status: Option<String>,
}

fn parse_query(biz: &str) -> Result<Query, String> {
    let biz: Value = serde_json::from_str(biz).map_err(|_| "biz 不是合法的JSON".to_string())?;
    let page_index = int_field(biz.get("page_index")).unwrap_or(1);
    let page_size = int_field(biz.get("page_size")).unwrap_or(30);
    if page_index < 1 {
        return Err("page_index 必须从1开始".into());
    }
    if !(1..=50).contains(&page_size) {
        return Err("page_size 不能大于50".into());
    }
    let begin = text_field(biz.get("modified_begin")).filter(|s| !s.is_empty());
    let end = text_field(biz.get("modified_end")).filter(|s| !s.is_empty());
    let window = match (begin, end) {
        (None, None) => None,
        (Some(b), Some(e)) => {
            let b = parse_beijing(&b).ok_or("modified_begin 格式错误")?;
            let e = parse_beijing(&e).ok_or("modified_end 格式错误")?;
            if e < b {
                return Err("modified_end 不能早于 modified_begin".into());
            }
            if e - b > ChronoDuration::days(7) {
                return Err("修改时间间隔不能超过7天".into());
            }
            Some((b, e))
        }
        _ => return Err("modified_begin 和 modified_end 必须同时提供".into()),
    };
    let io_ids = match text_field(biz.get("io_ids")).filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => {
            let ids: Vec<i64> = text
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| "io_ids 格式错误".to_string())
                })
                .collect::<Result<_, _>>()?;
            if ids.len() > 50 {
                return Err("io_ids 不能超过50个".into());
            }
            Some(ids)
        }
    };
    if window.is_none() && io_ids.is_none() {
        return Err("修改时间和单号不能同时为空".into());
    }
    Ok(Query {
        page_index: usize::try_from(page_index).unwrap_or(1),
        page_size: usize::try_from(page_size).unwrap_or(30),
        window,
        io_ids,
        status: text_field(biz.get("status")).filter(|s| !s.is_empty()),
    })
}

async fn count_query(
    State(sim): State<JstSim>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    if let Err((code, msg)) = sim.admit() {
        sim.count("rate_limited");
        return fail(code, msg).into_response();
    }
    if let Err(answer) = authenticate(&sim, &params) {
        let code = answer.0["code"].as_i64().unwrap_or(0);
        sim.count(if code == 100 {
            "token_expired"
        } else {
            "refused"
        });
        return answer.into_response();
    }
    match sim.fault() {
        Some(Fault::BadGateway) => {
            sim.count("fault_502");
            return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
        }
        Some(Fault::Truncated) => {
            sim.count("fault_truncated");
            return (
                StatusCode::OK,
                r#"{"code":0,"msg":"执行成功","data":{"page_index":1,"datas":[{"io_id":"#,
            )
                .into_response();
        }
        Some(Fault::TooFast) => {
            sim.count("fault_199");
            return fail(199, "调用太频繁，请稍后再试").into_response();
        }
        None => {}
    }
    let query = match parse_query(params.get("biz").map_or("", String::as_str)) {
        Ok(q) => q,
        Err(msg) => {
            sim.count("invalid");
            return fail(140, &msg).into_response();
        }
    };
    let Some(start) = (query.page_index - 1).checked_mul(query.page_size) else {
        sim.count("invalid");
        return fail(140, "page_index 超出范围").into_response();
    };
    // Count every match, clone only the page: the store is already in paging order.
    let (total, datas) = {
        let docs = sim.docs();
        let mut total = 0usize;
        let mut datas = Vec::with_capacity(query.page_size);
        // A window reads only its range of the (modified, io_id) order.
        use std::ops::Bound::{Included, Unbounded};
        let bounds = match query.window {
            Some((b, e)) => (Included((Some(b), i64::MIN)), Included((Some(e), i64::MAX))),
            None => (Unbounded, Unbounded),
        };
        match (&query.status, &query.io_ids) {
            (Some(status), None) => {
                let keys = docs.by_status.get(status).map(|k| k.range(bounds));
                for key in keys.into_iter().flatten() {
                    if total >= start
                        && datas.len() < query.page_size
                        && let Some(doc) = docs.sorted.get(key)
                    {
                        datas.push(doc.clone());
                    }
                    total += 1;
                }
            }
            _ => {
                let matches = docs.sorted.range(bounds).filter(|((_, id), doc)| {
                    query.io_ids.as_ref().is_none_or(|ids| ids.contains(id))
                        && query
                            .status
                            .as_deref()
                            .is_none_or(|s| doc.get("status").and_then(Value::as_str) == Some(s))
                });
                for (_, doc) in matches {
                    if total >= start && datas.len() < query.page_size {
                        datas.push(doc.clone());
                    }
                    total += 1;
                }
            }
        }
        (total, datas)
    };
    let page_count = total.div_ceil(query.page_size);
    sim.count("ok");
    Json(json!({
        "code": 0, "msg": "执行成功",
        "data": {
            "page_index": query.page_index, "page_size": query.page_size,
            "data_count": total, "page_count": page_count,
            "has_next": start.saturating_add(query.page_size) < total,
            "datas": datas,
        }
    }))
    .into_response()
}

async fn put_counts(State(sim): State<JstSim>, Json(docs): Json<Vec<Value>>) -> Json<Value> {
    let n = sim.put(docs);
    Json(json!({"stored": n}))
}

async fn get_counts(State(sim): State<JstSim>) -> Json<Value> {
    Json(Value::Array(sim.all()))
}

async fn get_stats(State(sim): State<JstSim>) -> Json<Value> {
    Json(json!(sim.stats()))
}

/// Warehouses the generator uses: `(wms_co_id, wh_id)`; `config/local.toml` maps each.
pub const GENERATED_WAREHOUSES: [(i64, i64); 5] = [(0, 1), (0, 2), (0, 3), (0, 4), (10_001, 1)];

/// A realistic set of `n` count documents, the same for the same seed: several warehouses and
/// branches, batches on some SKUs, every status, losses and gains, `modified` spread over the
/// last 30 days (ending an hour ago).
pub fn generate(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let end = now_beijing() - ChronoDuration::hours(1);
    let statuses = [
        ("Confirmed", 55),
        ("Archive", 15),
        ("WaitConfirm", 12),
        ("Cancelled", 10),
        ("Delete", 8),
    ];
    (0..n)
        .map(|i| {
            let io_id = 200_000 + i64::try_from(i).unwrap_or(0);
            let (wms_co_id, wh_id) = GENERATED_WAREHOUSES[rng.random_range(0..GENERATED_WAREHOUSES.len())];
            let roll = rng.random_range(0..100);
            let mut acc = 0;
            let status = statuses
                .iter()
                .find(|(_, w)| {
                    acc += w;
                    roll < acc
                })
                .map_or("Confirmed", |(s, _)| s);
            let modified = end - ChronoDuration::seconds(rng.random_range(0..30 * 86_400));
            let io_date = modified - ChronoDuration::seconds(rng.random_range(0..3_600));
            let lines = rng.random_range(1..=5);
            let items: Vec<Value> = (0..lines)
                .map(|l| {
                    let batched = rng.random_range(0..4) == 0;
                    let sku = if batched {
                        format!("B-{:03}", rng.random_range(1..=20))
                    } else {
                        format!("SKU-{:04}", rng.random_range(1..=300))
                    };
                    let mut qty: i64 = rng.random_range(-12..=8);
                    if rng.random_range(0..10) == 0 {
                        qty = 0;
                    }
                    let mut item = json!({
                        "io_id": io_id, "ioi_id": io_id * 10 + l, "sku_id": sku,
                        "i_id": sku.split('-').next().unwrap_or("X"), "name": format!("商品 {sku}"),
                        "properties_value": "默认", "r_qty": rng.random_range(0..200), "qty": qty,
                    });
                    if batched && qty != 0 {
                        let split = rng.random_range(0..=qty.abs());
                        let parts = [split * qty.signum(), (qty.abs() - split) * qty.signum()];
                        let batchs: Vec<Value> = parts
                            .iter()
                            .enumerate()
                            .map(|(b, q)| {
                                json!({"sku_id": sku, "qty": q, "batch_no": format!("L{io_id}{b}"),
                                    "product_date": "2026-01-15 00:00:00", "expiration_date": "2027-01-15 00:00:00",
                                    "supplier_id": 7, "supplier_name": "供应商"})
                            })
                            .collect();
                        if let Some(obj) = item.as_object_mut() {
                            obj.insert("batchs".into(), Value::Array(batchs));
                        }
                    }
                    item
                })
                .collect();
            json!({
                "io_id": io_id, "type": "盘点", "io_date": format_beijing(&io_date),
                "status": status, "warehouse": format!("仓库{wh_id}"), "wh_id": wh_id,
                "wms_co_id": wms_co_id, "creator_name": "仓管员", "remark": format!("月度盘点 {i}"),
                "modified": format_beijing(&modified), "f_status": "", "labels": "", "items": items,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_repeatable_and_varied() {
        let a = generate(200, 7);
        let b = generate(200, 7);
        let ids = |d: &[Value]| d.iter().map(|x| x["io_id"].clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        let statuses: std::collections::BTreeSet<String> = a
            .iter()
            .filter_map(|d| d["status"].as_str().map(str::to_string))
            .collect();
        assert_eq!(statuses.len(), 5);
        assert!(a.iter().any(|d| {
            d["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|l| l.get("batchs").is_some()))
        }));
        assert!(a.iter().any(|d| d["wms_co_id"] == 10_001));
    }

    #[test]
    fn biz_is_validated_like_the_platform() {
        assert!(parse_query(r#"{"page_index":1,"page_size":51,"modified_begin":"2026-01-01 00:00:00","modified_end":"2026-01-02 00:00:00"}"#).is_err());
        assert!(parse_query(r#"{"page_index":1,"modified_begin":"2026-01-01 00:00:00"}"#).is_err());
        assert!(parse_query(r#"{"page_index":1,"modified_begin":"2026-01-01 00:00:00","modified_end":"2026-01-09 00:00:00"}"#).is_err());
        assert!(parse_query(r#"{"page_index":1}"#).is_err());
        assert!(parse_query(r#"{"page_index":"1","page_size":"50","io_ids":"1,2"}"#).is_ok());
        assert!(parse_query("not json").is_err());
    }
}
