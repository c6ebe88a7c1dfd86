//! The Jushuitan simulator: `/open/inventory/count/query` with the real signature, timestamp and
//! token checks, `biz` validation and stable paging, plus `/_sim/` hooks for tests.
//!
//! Documents are served in a stable order (`modified`, then `io_id`), so paging is
//! deterministic; the window filters on `modified` like the real service.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Form, State};
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
    /// `access_token`.
    pub access_token: String,
}

impl Default for JstCredentials {
    /// The defaults of `config/local.toml`.
    fn default() -> Self {
        Self {
            app_key: "local-app-key".into(),
            app_secret: "local-app-secret".into(),
            access_token: "local-access-token".into(),
        }
    }
}

/// Largest timestamp skew accepted (the platform's 10 minutes).
const MAX_SKEW_SECS: i64 = 600;

struct Inner {
    creds: JstCredentials,
    docs: Mutex<BTreeMap<i64, Value>>,
    stats: Mutex<BTreeMap<String, u64>>,
}

/// A running simulator's state; clones share it.
#[derive(Clone)]
pub struct JstSim {
    inner: Arc<Inner>,
}

impl JstSim {
    /// A simulator holding `docs`.
    pub fn new(creds: JstCredentials, docs: Vec<Value>) -> Self {
        let sim = Self {
            inner: Arc::new(Inner {
                creds,
                docs: Mutex::new(BTreeMap::new()),
                stats: Mutex::new(BTreeMap::new()),
            }),
        };
        sim.put(docs);
        sim
    }

    fn docs(&self) -> MutexGuard<'_, BTreeMap<i64, Value>> {
        self.inner
            .docs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces documents (by `io_id`); returns how many were taken.
    pub fn put(&self, docs: Vec<Value>) -> usize {
        let mut held = self.docs();
        let mut n = 0;
        for doc in docs {
            if let Some(id) = int_field(doc.get("io_id")) {
                held.insert(id, doc);
                n += 1;
            }
        }
        n
    }

    /// Every document held.
    pub fn all(&self) -> Vec<Value> {
        self.docs().values().cloned().collect()
    }

    fn count(&self, outcome: &str) {
        let mut stats = self
            .inner
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stats.entry(outcome.to_string()).or_default() += 1;
    }

    /// Request counts by outcome.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(jst::COUNT_QUERY_PATH, post(count_query))
            .route("/_sim/counts", post(put_counts).get(get_counts))
            .route("/_sim/stats", get(get_stats))
            .with_state(self.clone())
    }
}

fn fail(code: i64, msg: &str) -> Json<Value> {
    Json(json!({"code": code, "msg": msg, "data": null}))
}

/// Checks the common parameters of a business call; `Err` is the answer to send.
fn authenticate(sim: &JstSim, params: &HashMap<String, String>) -> Result<(), Json<Value>> {
    for required in ["app_key", "timestamp", "sign", "biz", "charset", "version"] {
        if params.get(required).is_none_or(String::is_empty) {
            return Err(fail(130, &format!("缺少参数 {required}")));
        }
    }
    let creds = &sim.inner.creds;
    if params.get("app_key") != Some(&creds.app_key) {
        return Err(fail(10, "验证失败！无效签名"));
    }
    let sorted: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "sign")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if params.get("sign") != Some(&jst::sign::sign(&creds.app_secret, &sorted)) {
        return Err(fail(10, "验证失败！无效签名"));
    }
    let timestamp: i64 = params
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if (now_beijing().timestamp() - timestamp).abs() > MAX_SKEW_SECS {
        return Err(fail(180, "时间戳超出允许范围"));
    }
    if params.get("access_token") != Some(&creds.access_token) {
        return Err(fail(100, "无效的access_token"));
    }
    Ok(())
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
) -> Json<Value> {
    if let Err(answer) = authenticate(&sim, &params) {
        sim.count("refused");
        return answer;
    }
    let query = match parse_query(params.get("biz").map_or("", String::as_str)) {
        Ok(q) => q,
        Err(msg) => {
            sim.count("invalid");
            return fail(140, &msg);
        }
    };
    let mut matching: Vec<(DateTime<FixedOffset>, i64, Value)> = sim
        .docs()
        .iter()
        .filter_map(|(id, doc)| {
            let modified = text_field(doc.get("modified")).and_then(|m| parse_beijing(&m))?;
            Some((modified, *id, doc))
        })
        .filter(|(modified, id, doc)| {
            query
                .window
                .is_none_or(|(b, e)| *modified >= b && *modified <= e)
                && query.io_ids.as_ref().is_none_or(|ids| ids.contains(id))
                && query
                    .status
                    .as_ref()
                    .is_none_or(|s| text_field(doc.get("status")).as_ref() == Some(s))
        })
        .map(|(m, id, doc)| (m, id, doc.clone()))
        .collect();
    matching.sort_by_key(|m| (m.0, m.1));
    let total = matching.len();
    let start = (query.page_index - 1) * query.page_size;
    let datas: Vec<Value> = matching
        .into_iter()
        .skip(start)
        .take(query.page_size)
        .map(|(_, _, d)| d)
        .collect();
    let page_count = total.div_ceil(query.page_size);
    sim.count("ok");
    Json(json!({
        "code": 0, "msg": "执行成功",
        "data": {
            "page_index": query.page_index, "page_size": query.page_size,
            "data_count": total, "page_count": page_count,
            "has_next": start + query.page_size < total,
            "datas": datas,
        }
    }))
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
