//! The Kingdee simulator: `POST /{site}/{Service}.common.kdsvc` with signed headers verified,
//! `BatchSave` validating each bill on its own and answering per `DIndex`, `ExecuteBillQuery`,
//! and `/_sim/` hooks for tests.
//!
//! Strict where the real service is: unknown field keys are refused (MsgCode 9), a bare string
//! where a reference object belongs is refused, bill numbers are unique across saved bills and
//! within one batch, lot-managed materials need a lot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};

/// Credentials the simulator accepts.
#[derive(Clone)]
pub struct KingdeeCredentials {
    /// Data centre id.
    pub acct_id: String,
    /// Integration user.
    pub user_name: String,
    /// `123456_…`.
    pub app_id: String,
    /// 32 hex characters.
    pub app_secret: String,
    /// The user's password (ValidateUser sessions).
    pub password: String,
}

impl Default for KingdeeCredentials {
    /// The defaults of `config/local.toml`.
    fn default() -> Self {
        Self {
            acct_id: "local-acct".into(),
            user_name: "local-user".into(),
            app_id: "123456_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY".into(),
            app_secret: "0123456789abcdef0123456789abcdef".into(),
            password: "local-password".into(),
        }
    }
}

/// The rows of `StartRow`, at most `Limit` (0: all, at most 10,000), as Kingdee pages a
/// query; an error answer passes through.
fn page(rows: Value, data: &Value) -> Value {
    let Value::Array(rows) = rows else {
        return rows;
    };
    if rows
        .first()
        .is_some_and(|r| r.get(0).is_some_and(Value::is_object))
    {
        return Value::Array(rows);
    }
    let start = data.get("StartRow").and_then(Value::as_u64).unwrap_or(0) as usize;
    let limit = match data.get("Limit").and_then(Value::as_u64).unwrap_or(0) as usize {
        0 => 10_000,
        n => n.min(10_000),
    };
    Value::Array(rows.into_iter().skip(start).take(limit).collect())
}

/// A saved bill.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SavedBill {
    /// Form.
    pub form_id: String,
    /// `FBillNo`.
    pub bill_no: String,
    /// `FID`.
    pub id: i64,
    /// The model exactly as the client sent it.
    pub model: Value,
    /// `FDocumentStatus`: A created, B submitted, C audited.
    pub status: String,
}

#[derive(Default)]
struct Store {
    bills: Vec<SavedBill>,
    stats: BTreeMap<String, u64>,
    /// Stock moved by saved bills, by `"{stock}:{material}"`.
    moved: BTreeMap<String, f64>,
    /// (form, bill number) of every saved bill, and where it is in `bills`: numbers are
    /// unique per form, and operations and queries by number find a bill without scanning.
    numbers: std::collections::HashMap<(String, String), usize>,
    /// Saved so far, deleted bills included: `FID`s are never given twice.
    saved: i64,
}

/// Faults and delays the simulator injects.
#[derive(Clone, Debug)]
pub struct KingdeeBehaviour {
    /// Share of write calls answered HTTP 500; half of them after the bills were committed.
    pub fail_rate: f64,
    /// Share of write calls refused for every bill with MsgCode 13 (bill locked) or 14 (limit).
    pub busy_rate: f64,
    /// Added to every call (inside the session's turn, so one session's calls queue up).
    pub latency: std::time::Duration,
    /// Sessions expire after this long unused (sliding; Kingdee's is 20 minutes).
    pub session_ttl: std::time::Duration,
    /// Seed of the fault injection.
    pub seed: u64,
}

impl Default for KingdeeBehaviour {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            busy_rate: 0.0,
            latency: std::time::Duration::ZERO,
            session_ttl: std::time::Duration::from_secs(20 * 60),
            seed: 1,
        }
    }
}

/// A login session: when it was last used, and the turn its calls take one at a time.
struct Session {
    last_used: std::time::Instant,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// What a write call suffers.
enum WriteFault {
    None,
    FailBeforeCommit,
    FailAfterCommit,
    Busy(i64),
}

struct Inner {
    creds: KingdeeCredentials,
    master: Option<MasterData>,
    behaviour: KingdeeBehaviour,
    rng: Mutex<rand::rngs::StdRng>,
    store: Mutex<Store>,
    sessions: Mutex<std::collections::HashMap<String, Session>>,
}

/// A running simulator's state; clones share it.
#[derive(Clone)]
pub struct KingdeeSim {
    inner: Arc<Inner>,
}

/// Largest accepted skew of `x-api-timestamp`.
const MAX_SKEW_SECS: i64 = 900;

mod forms;
mod master;
mod query;
mod routes;

use forms::*;
use query::*;

pub use master::{Department, MasterData, Material, Stock};
use routes::*;

impl KingdeeSim {
    /// A simulator; without master data every material and stock number is accepted.
    pub fn new(creds: KingdeeCredentials, master: Option<MasterData>) -> Self {
        Self::with_behaviour(creds, master, KingdeeBehaviour::default())
    }

    /// A simulator that injects faults and delays.
    pub fn with_behaviour(
        creds: KingdeeCredentials,
        master: Option<MasterData>,
        behaviour: KingdeeBehaviour,
    ) -> Self {
        use rand::SeedableRng;
        Self {
            inner: Arc::new(Inner {
                creds,
                master,
                rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(behaviour.seed)),
                behaviour,
                store: Mutex::new(Store::default()),
                sessions: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    fn write_fault(&self) -> WriteFault {
        use rand::Rng;
        let b = &self.inner.behaviour;
        let mut rng = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let roll: f64 = rng.random();
        if roll < b.fail_rate {
            if rng.random::<bool>() {
                WriteFault::FailAfterCommit
            } else {
                WriteFault::FailBeforeCommit
            }
        } else if roll < b.fail_rate + b.busy_rate {
            WriteFault::Busy(if rng.random::<bool>() { 13 } else { 14 })
        } else {
            WriteFault::None
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every saved bill, in saving order.
    pub fn bills(&self) -> Vec<SavedBill> {
        self.store().bills.clone()
    }

    /// Removes bill `bill_no` of `form_id`, as a person in Kingdee would (unaudit, then
    /// delete): an audited bill's stock movement is reversed. False when there is no such
    /// bill. (A test hook: reconciliation must see a bill gone.)
    pub fn delete_bill(&self, form_id: &str, bill_no: &str) -> bool {
        let mut store = self.store();
        let Some(at) = store
            .numbers
            .remove(&(form_id.to_string(), bill_no.to_string()))
        else {
            return false;
        };
        let bill = store.bills.remove(at);
        // The bills after it moved up by one.
        for index in store.numbers.values_mut() {
            if *index > at {
                *index -= 1;
            }
        }
        if bill.status == "C" {
            let sign = if form_spec(form_id).is_some_and(|f| f.outbound) {
                1.0
            } else {
                -1.0
            };
            for (key, qty) in outbound(&bill.model) {
                *store.moved.entry(key).or_default() -= sign * qty;
            }
        }
        true
    }

    /// How many bills are saved.
    pub fn bill_count(&self) -> usize {
        self.store().bills.len()
    }

    /// The HTTP routes (site path `/k3cloud`, or any other single segment).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{site}/{service}", post(service))
            .route("/_sim/bills", get(list_bills))
            .route("/_sim/bills/{form}/{bill_no}", delete(delete_bill))
            .route("/_sim/stats", get(stats))
            .route("/_sim/expire-sessions", post(expire_sessions))
            .with_state(self.clone())
    }

    fn count(&self, what: &str) {
        *self.store().stats.entry(what.to_string()).or_default() += 1;
    }

    /// Drops every session (as an IIS recycle would); clients must log in again.
    pub fn expire_sessions(&self) {
        self.sessions().clear();
    }

    fn sessions(&self) -> MutexGuard<'_, std::collections::HashMap<String, Session>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signed headers, or else a live session (cookie, `kdservice-sessionid` or `SID` header).
    /// A session's turn is returned: its calls are served one at a time.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Option<Arc<tokio::sync::Mutex<()>>>, Value> {
        if headers.contains_key("x-kd-appkey") || headers.contains_key("x-api-signature") {
            return self.verify(headers, path).map(|()| None);
        }
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let from_cookie = get("cookie").and_then(|c| {
            c.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                k.eq_ignore_ascii_case("kdservice-sessionid")
                    .then(|| v.to_string())
            })
        });
        let sid = get("kdservice-sessionid")
            .or_else(|| get("sid"))
            .map(str::to_string)
            .or(from_cookie)
            .ok_or_else(session_lost)?;
        let mut sessions = self.sessions();
        let ttl = self.inner.behaviour.session_ttl;
        match sessions.get_mut(&sid) {
            Some(session) if session.last_used.elapsed() < ttl => {
                session.last_used = std::time::Instant::now();
                Ok(Some(session.turn.clone()))
            }
            _ => {
                sessions.remove(&sid);
                Err(session_lost())
            }
        }
    }

    /// `AuthService.ValidateUser` and `AuthService.LoginBySign`.
    fn login(&self, service: &str, body: &Value) -> Response {
        let args: Vec<String> = body
            .get("parameters")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| common::messages::text_field(Some(v)).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
        let c = &self.inner.creds;
        let ok = if service.ends_with("validateuser") {
            arg(0) == c.acct_id && arg(1) == c.user_name && arg(2) == c.password
        } else {
            let fresh = arg(3)
                .parse::<i64>()
                .is_ok_and(|ts| (chrono::Utc::now().timestamp() - ts).abs() <= MAX_SKEW_SECS);
            let expected =
                crate::sign::kingdee_login_sign([arg(0), arg(1), arg(2), &c.app_secret, arg(3)]);
            arg(0) == c.acct_id
                && arg(1) == c.user_name
                && arg(2) == c.app_id
                && fresh
                && arg(4) == expected
        };
        if !ok {
            self.count("login_refused");
            return Json(json!({"Message": "用户名或密码错误！", "LoginResultType": 0, "KDSVCSessionId": null,
                "IsSuccessByAPI": false}))
            .into_response();
        }
        use rand::Rng;
        let n: u128 = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .random();
        let sid = format!("{n:032x}");
        self.sessions().insert(
            sid.clone(),
            Session {
                last_used: std::time::Instant::now(),
                turn: Arc::new(tokio::sync::Mutex::new(())),
            },
        );
        self.count("login");
        let mut response = Json(
            json!({"Message": null, "LoginResultType": 1, "KDSVCSessionId": sid,
            "Context": {"UserName": c.user_name, "DBid": c.acct_id}, "IsSuccessByAPI": true}),
        )
        .into_response();
        for cookie in [
            format!("kdservice-sessionid={sid}; path=/"),
            format!("ASP.NET_SessionId={sid}; path=/; HttpOnly"),
        ] {
            if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
                response
                    .headers_mut()
                    .append(axum::http::header::SET_COOKIE, v);
            }
        }
        response
    }

    /// Verifies the signed headers exactly as the SDKs compute them.
    fn verify(&self, headers: &HeaderMap, path: &str) -> Result<(), Value> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let creds = &self.inner.creds;
        let (Some(app_key), Some(timestamp), Some(signature), Some(app_data), Some(kd_signature)) = (
            get("x-kd-appkey"),
            get("x-api-timestamp"),
            get("x-api-signature"),
            get("x-kd-appdata"),
            get("x-kd-signature"),
        ) else {
            return Err(session_lost());
        };
        let refused = || status_error(2, "认证失败：签名验证不通过");
        if app_key != creds.app_id || get("x-api-nonce") != Some(timestamp) {
            return Err(refused());
        }
        let client_sec = crate::sign::kingdee_client_sec(&creds.app_id).ok_or_else(refused)?;
        if crate::sign::kingdee_api_signature(&client_sec, path, timestamp, timestamp) != signature
        {
            return Err(refused());
        }
        let plain = base64::engine::general_purpose::STANDARD
            .decode(app_data)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(refused)?;
        if crate::sign::kingdee_kd_signature(&creds.app_secret, &creds.app_id, &plain)
            != kd_signature
        {
            return Err(refused());
        }
        let mut parts = plain.split(',');
        if parts.next() != Some(creds.acct_id.as_str())
            || parts.next() != Some(creds.user_name.as_str())
        {
            return Err(refused());
        }
        let ts: i64 = timestamp.parse().map_err(|_| refused())?;
        let ts = if ts > 100_000_000_000 { ts / 1000 } else { ts };
        if (chrono::Utc::now().timestamp() - ts).abs() > MAX_SKEW_SECS {
            return Err(status_error(2, "认证失败：时间戳已过期"));
        }
        Ok(())
    }

    fn batch_save(&self, form_id: &str, mut data: Value) -> Value {
        let models: Vec<Value> = match data.get_mut("Model").map(Value::take) {
            Some(Value::Array(m)) => m,
            Some(m @ Value::Object(_)) => vec![m],
            _ => return status_error(8, "参数Model不能为空"),
        };
        let count = models.len();
        let Some(spec) = form_spec(form_id) else {
            return status_error(9, &format!("业务对象“{form_id}”不存在"));
        };
        let mut store = self.store();
        let mut numbers_in_batch = BTreeSet::new();
        let mut errors = Vec::new();
        let mut saved = Vec::new();
        let mut msg_code = 0;
        for (index, model) in models.into_iter().enumerate() {
            let bill_no = model
                .get("FBillNo")
                .and_then(Value::as_str)
                .map(str::to_string);
            // Stock moves at audit, not at save: a save checks no stock.
            let mut problems = validate(spec, &model, self.inner.master.as_ref());
            if problems.is_empty()
                && let Some(no) = &bill_no
                && (store
                    .numbers
                    .contains_key(&(form_id.to_string(), no.clone()))
                    || !numbers_in_batch.insert(no.clone()))
            {
                problems.push(Problem::new(
                    11,
                    Some("FBillNo"),
                    format!("违反字段唯一性要求：编码唯一。[{no}]在当前系统中已经被使用。"),
                ));
            }
            if problems.is_empty() {
                let id = 100_001 + store.saved;
                store.saved += 1;
                let no = bill_no.unwrap_or_else(|| format!("QTCK{id:06}"));
                let at = store.bills.len();
                store.numbers.insert((form_id.to_string(), no.clone()), at);
                store.bills.push(SavedBill {
                    form_id: form_id.to_string(),
                    bill_no: no.clone(),
                    id,
                    model,
                    status: "A".into(),
                });
                saved.push(json!({"Id": id, "Number": no, "DIndex": index}));
            } else {
                for p in problems {
                    if msg_code == 0 {
                        msg_code = p.msg_code;
                    }
                    errors
                        .push(json!({"FieldName": p.field, "Message": p.message, "DIndex": index}));
                }
            }
        }
        *store.stats.entry("bills_saved".into()).or_default() += saved.len() as u64;
        *store.stats.entry("bills_refused".into()).or_default() +=
            count.saturating_sub(saved.len()) as u64;
        let need_return: Vec<Value> = saved
            .iter()
            .map(|s| json!({"FID": s["Id"], "FBillNo": s["Number"]}))
            .collect();
        let mut status = json!({
            "IsSuccess": errors.is_empty(), "Errors": errors, "SuccessEntitys": saved,
            "SuccessMessages": [], "MsgCode": msg_code,
        });
        if !errors.is_empty()
            && let Some(obj) = status.as_object_mut()
        {
            obj.insert("ErrorCode".into(), json!(500));
        }
        json!({"Result": {"ResponseStatus": status, "NeedReturnData": need_return}})
    }

    /// The audit's stock check (SPEC of the real service: stock moves at Audit). An outbound
    /// bill that takes more than is on hand (for stocks listed in `on_hand`) is refused
    /// outright when the account forbids negative stock, and otherwise meets the ignorable
    /// interaction error (MsgCode 11, `AbstractInteractionResult`) unless the call carries
    /// `InterationFlags: STK_InvCheckResult`. `None`: the stock may move.
    fn negative_stock(&self, store: &Store, bill: &SavedBill, allowed: bool) -> Option<String> {
        let master = self.inner.master.as_ref()?;
        if !form_spec(&bill.form_id).is_some_and(|f| f.outbound) {
            return None;
        }
        let (key, _) = outbound(&bill.model).into_iter().find(|(key, qty)| {
            master.on_hand.get(key).is_some_and(|on_hand| {
                *qty > on_hand - store.moved.get(key).copied().unwrap_or(0.0)
            })
        })?;
        if !master.allow_negative {
            Some(format!(
                "负库存限制 | 仓存参数不允许负库存：{key} 的即时库存不足"
            ))
        } else if allowed {
            None
        } else {
            Some("更新库存时出现可以忽略的异常数据，是否继续？".into())
        }
    }

    /// Submit (A → B) or Audit (B → C) by number; one result per number.
    fn operate(&self, audit: bool, form_id: &str, data: &Value) -> Value {
        let numbers: Vec<String> = match data.get("Numbers") {
            Some(Value::Array(n)) => n
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        if numbers.is_empty() {
            return status_error(8, "参数Numbers不能为空");
        }
        let allowed = data
            .get("InterationFlags")
            .and_then(Value::as_str)
            .is_some_and(|f| f.split(';').any(|x| x.trim() == "STK_InvCheckResult"));
        let mut store = self.store();
        let mut saved = Vec::new();
        let mut errors = Vec::new();
        for (index, number) in numbers.iter().enumerate() {
            let Some(at) = store
                .numbers
                .get(&(form_id.to_string(), number.clone()))
                .copied()
            else {
                errors.push(json!({"FieldName": null, "Message": format!("单据编号为“{number}”的单据不存在"), "DIndex": index}));
                continue;
            };
            let status = store.bills[at].status.clone();
            let mut outcome = match (audit, status.as_str()) {
                (false, "A") => Ok("B"),
                (false, "B") => Err(format!("单据“{number}”已经提交，不能重复提交")),
                (false, _) => Err(format!("单据“{number}”已经审核，不能提交")),
                (true, "A") => Err(format!("单据“{number}”未提交，不能审核")),
                (true, "B") => Ok("C"),
                (true, _) => Err("单据已经审核！".to_string()),
            };
            if outcome == Ok("C") {
                if let Some(refused) = self.negative_stock(&store, &store.bills[at], allowed) {
                    outcome = Err(refused);
                } else {
                    let sign = if form_spec(form_id).is_some_and(|f| f.outbound) {
                        1.0
                    } else {
                        -1.0
                    };
                    for (key, qty) in outbound(&store.bills[at].model) {
                        *store.moved.entry(key).or_default() += sign * qty;
                    }
                }
            }
            let bill = &mut store.bills[at];
            match outcome {
                Ok(status) => {
                    bill.status = status.into();
                    saved.push(json!({"Id": bill.id, "Number": number, "DIndex": index}));
                }
                Err(message) => {
                    let field = message
                        .starts_with("更新库存")
                        .then_some("AbstractInteractionResult");
                    errors.push(json!({"FieldName": field, "Message": message, "DIndex": index}))
                }
            }
        }
        let msg_code = if errors.is_empty() { 0 } else { 11 };
        json!({"Result": {"ResponseStatus": {"IsSuccess": errors.is_empty(), "Errors": errors,
            "SuccessEntitys": saved, "SuccessMessages": [], "MsgCode": msg_code}}})
    }

    /// View: the bill by number.
    fn view(&self, form_id: &str, data: &Value) -> Value {
        let number = data
            .get("Number")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match self
            .store()
            .bills
            .iter()
            .find(|b| b.form_id == form_id && b.bill_no == number)
        {
            Some(b) => {
                json!({"Result": {"ResponseStatus": {"IsSuccess": true, "Errors": [], "SuccessEntitys": [],
                "SuccessMessages": [], "MsgCode": 0}, "Result": {"Id": b.id, "Number": b.bill_no,
                "DocumentStatus": b.status, "Model": b.model}}})
            }
            None => status_error(10, &format!("单据编号为“{number}”的单据不存在")),
        }
    }

    fn query(&self, data: &Value) -> Value {
        let form_id = data
            .get("FormId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(keys) = data.get("FieldKeys").and_then(Value::as_str) else {
            return json!([[status_error(8, "FieldKeys不能为空")]]);
        };
        let keys: Vec<&str> = keys.split(',').map(str::trim).collect();
        let filter_text = data
            .get("FilterString")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(master) = &self.inner.master {
            let numbers: Option<Vec<String>> = if filter_text.trim().is_empty() {
                None
            } else {
                match numbers_of("fnumber", filter_text) {
                    Some(n) => Some(n.into_iter().collect()),
                    None if form_id.to_ascii_uppercase().starts_with("BD_")
                        || form_id.eq_ignore_ascii_case("ORG_Organizations") =>
                    {
                        return json!([[status_error(
                            8,
                            &format!("过滤条件不合法：{filter_text}")
                        )]]);
                    }
                    None => None,
                }
            };
            if let Some(rows) = master.query(form_id, &keys, numbers.as_deref()) {
                return page(rows, data);
            }
        }
        for key in &keys {
            if !HEADER_KEYS
                .iter()
                .chain(ENTRY_KEYS)
                .any(|k| k.eq_ignore_ascii_case(key))
            {
                return json!([[status_error(9, &format!("元数据中标识为{key}的字段不存在"))]]);
            }
        }
        // Asking for an entry field gives one row per entry, as Kingdee does.
        let per_entry = keys
            .iter()
            .any(|k| ENTRY_KEYS.iter().any(|e| e.eq_ignore_ascii_case(k)));
        let filter = data
            .get("FilterString")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(predicate) = Filter::parse(filter) else {
            return json!([[status_error(8, &format!("过滤条件不合法：{filter}"))]]);
        };
        let store = self.store();
        let mut rows = Vec::new();
        // By number through the index; any other filter reads every bill of the form.
        let candidates: Vec<&SavedBill> = match &predicate {
            Filter::BillNo(numbers) => numbers
                .iter()
                .filter_map(|no| store.numbers.get(&(form_id.to_string(), no.clone())))
                .filter_map(|at| store.bills.get(*at))
                .collect(),
            _ => store.bills.iter().collect(),
        };
        for b in candidates
            .into_iter()
            .filter(|b| b.form_id == form_id && predicate.matches(b))
        {
            let entries: Vec<Option<&Value>> = if per_entry {
                b.model
                    .get("FEntity")
                    .and_then(Value::as_array)
                    .map(|e| e.iter().map(Some).collect())
                    .unwrap_or_default()
            } else {
                vec![None]
            };
            for entry in entries {
                rows.push(Value::Array(
                    keys.iter().map(|k| field(b, entry, k)).collect(),
                ));
            }
        }
        page(Value::Array(rows), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bill(no: &str) -> Value {
        json!({"FBillNo": no, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FStockOrgId": {"FNumber": "100"},
            "FPickOrgId": {"FNumber": "100"}, "FOwnerIdHead": {"FNumber": "100"}, "FDate": "2026-03-01",
            "FOwnerTypeIdHead": "BD_OwnerOrg", "FStockDirect": "GENERAL",
            "FEntity": [{"FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"}, "FQty": 2.0,
                "FStockId": {"FNumber": "CK001"}}]})
    }

    fn master() -> MasterData {
        serde_json::from_value(json!({
            "orgs": ["100", "200"],
            "stocks": ["CK001", {"number": "CK002", "org": "100", "locations": ["A-01"]}],
            "materials": [{"number": "SKU-1"}, {"number": "LOT-1", "lot": true}],
            "on_hand": {"CK001:SKU-1": 3}
        }))
        .expect("master data")
    }

    #[test]
    fn each_bill_is_settled_on_its_own() {
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(master()));
        let mut bare = bill("B2");
        bare["FEntity"][0]["FStockId"] = json!("CK001");
        let mut unknown_field = bill("B3");
        unknown_field["FXxx"] = json!(1);
        let mut lot = bill("B4");
        lot["FEntity"][0]["FMaterialId"] = json!({"FNumber": "LOT-1"});
        let answer = sim.batch_save(
            MIS_DELIVERY,
            json!({"Model": [bill("B1"), bare, unknown_field, lot, bill("B1")]}),
        );
        let status = &answer["Result"]["ResponseStatus"];
        assert_eq!(status["IsSuccess"], false);
        assert_eq!(status["SuccessEntitys"].as_array().map(Vec::len), Some(1));
        let failed: BTreeSet<i64> = status["Errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["DIndex"].as_i64())
            .collect();
        assert_eq!(failed, BTreeSet::from([1, 2, 3, 4]));
        let text = status["Errors"].to_string();
        assert!(text.contains("元数据中标识为FXxx的字段不存在"));
        assert!(text.contains("已经被使用"));
        assert!(text.contains("批号"));
        let again = sim.batch_save(MIS_DELIVERY, json!({"Model": [bill("B1")]}));
        assert!(again.to_string().contains("[B1]在当前系统中已经被使用"));
        let gain = json!({"FBillNo": "G1", "FBillTypeID": {"FNUMBER": "QTRKD01_SYS"}, "FStockOrgId": {"FNumber": "100"},
            "FOwnerIdHead": {"FNumber": "100"}, "FDate": "2026-03-01",
            "FEntity": [{"FInStockType": "1", "FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"},
                "FQty": 1.0, "FStockId": {"FNumber": "CK001"}}]});
        let mut gain_with_pick = gain.clone();
        gain_with_pick["FPickOrgId"] = json!({"FNumber": "100"});
        gain_with_pick["FBillNo"] = json!("G2");
        let gains = sim.batch_save(MISCELLANEOUS, json!({"Model": [gain, gain_with_pick]}));
        let gain_status = &gains["Result"]["ResponseStatus"];
        assert_eq!(
            gain_status["SuccessEntitys"].as_array().map(Vec::len),
            Some(1)
        );
        assert!(
            gain_status["Errors"].to_string().contains("FPickOrgId"),
            "the inbound form has no pick organisation"
        );
        assert_eq!(sim.bills().len(), 2);
    }

    #[test]
    fn queries_filter_by_bill_number_or_id() {
        let sim = KingdeeSim::new(KingdeeCredentials::default(), None);
        sim.batch_save(MIS_DELIVERY, json!({"Model": [bill("B1"), bill("B2")]}));
        let rows = sim.query(&json!({"FormId": MIS_DELIVERY, "FieldKeys": "FID,FBillNo", "FilterString": "FBillNo in ('B2','B9')"}));
        assert_eq!(rows, json!([[100_002, "B2"]]));
        let rows = sim.query(
            &json!({"FormId": MIS_DELIVERY, "FieldKeys": "FBillNo", "FilterString": "FID=100001"}),
        );
        assert_eq!(rows, json!([["B1"]]));
        // A period and our number prefix, as reconciliation asks.
        let period = |filter: &str| {
            sim.query(
                &json!({"FormId": MIS_DELIVERY, "FieldKeys": "FBillNo", "FilterString": filter}),
            )
        };
        assert_eq!(
            period("FBillNo like 'B%' and FDate >= '2026-03-01' and FDate <= '2026-03-31'")
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(period("FDate > '2026-03-01'"), json!([]));
        assert_eq!(
            period("FDate<'2026-03-02' and FBillNo like 'B_'")
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(period("FBillNo like 'X%'"), json!([]));
        let bad = sim.query(&json!({"FormId": MIS_DELIVERY, "FieldKeys": "FNope"}));
        assert!(bad.to_string().contains("FNope"));
    }

    #[test]
    fn a_stock_belongs_to_its_organisation_and_a_location_stock_needs_a_location() {
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(master()));
        let in_org = |no: &str, org: &str, loc: Option<&str>| {
            let mut b = bill(no);
            for key in ["FStockOrgId", "FPickOrgId", "FOwnerIdHead"] {
                b[key] = json!({"FNumber": org});
            }
            b["FEntity"][0]["FStockId"] = json!({"FNumber": "CK002"});
            if let Some(l) = loc {
                b["FEntity"][0]["FStockLocId"] = json!({"FSTOCKLOCID__FF100001": {"FNumber": l}});
            }
            b
        };
        let answer = sim.batch_save(
            MIS_DELIVERY,
            json!({"Model": [
                in_org("L1", "100", Some("A-01")),
                in_org("L2", "200", Some("A-01")),
                in_org("L3", "100", None),
                in_org("L4", "100", Some("Z-9"))
            ]}),
        );
        let status = &answer["Result"]["ResponseStatus"];
        assert_eq!(status["SuccessEntitys"].as_array().map(Vec::len), Some(1));
        let errors = status["Errors"].as_array().expect("errors");
        let of = |i: i64| {
            errors
                .iter()
                .filter(|e| e["DIndex"] == i)
                .map(|e| e["Message"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(of(1).contains("“CK002”在系统中不存在"), "{}", of(1));
        assert!(of(2).contains("启用了仓位管理"), "{}", of(2));
        assert!(of(3).contains("“Z-9”在系统中不存在"), "{}", of(3));
        // An account whose location dimension is FF100001 has no other.
        let mut strict = master();
        strict.location_field = Some("FF100002".into());
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(strict));
        let answer = sim.batch_save(
            MIS_DELIVERY,
            json!({"Model": [in_org("L5", "100", Some("A-01"))]}),
        );
        assert!(
            answer
                .to_string()
                .contains("FSTOCKLOCID__FF100001的字段不存在"),
            "{answer}"
        );
    }

    #[test]
    fn number_filters_read_quoted_lists() {
        let n = numbers_of("fnumber", "FNumber in ('A', 'B''s','C,D')").expect("a list");
        assert_eq!(
            n.into_iter().collect::<Vec<_>>(),
            ["A", "B's", "C,D"].map(String::from)
        );
        assert!(numbers_of("fnumber", "FNumber='X'").is_some_and(|n| n.contains("X")));
        assert!(numbers_of("fnumber", "FNumber in ('A' 'B')").is_none());
        assert!(numbers_of("fnumber", "FNumber in ('A'").is_none());
        assert!(numbers_of("fbillno", "FNumber='X'").is_none());
    }

    #[test]
    fn stock_moves_at_audit_where_negative_stock_is_checked() {
        let audit = |sim: &KingdeeSim, no: &str, flag: bool| {
            sim.operate(false, MIS_DELIVERY, &json!({"Numbers": [no]}));
            let flags = if flag { "STK_InvCheckResult" } else { "" };
            sim.operate(
                true,
                MIS_DELIVERY,
                &json!({"Numbers": [no], "InterationFlags": flags}),
            )
        };
        let big = |no: &str| {
            let mut b = bill(no);
            b["FEntity"][0]["FQty"] = json!(5.0);
            b
        };
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(master()));
        // 5 out of 3 on hand: the save takes no stock, so it passes.
        let saved = sim.batch_save(MIS_DELIVERY, json!({"Model": [big("N1"), big("N2")]}));
        assert_eq!(saved["Result"]["ResponseStatus"]["IsSuccess"], true);
        let refused = audit(&sim, "N1", false);
        let text = refused["Result"]["ResponseStatus"].to_string();
        assert!(
            text.contains("AbstractInteractionResult") && text.contains("可以忽略"),
            "{text}"
        );
        assert_eq!(
            sim.bills()[0].status,
            "B",
            "the saved bill stays, submitted"
        );
        let allowed = audit(&sim, "N1", true);
        assert_eq!(allowed["Result"]["ResponseStatus"]["IsSuccess"], true);
        assert_eq!(sim.bills()[0].status, "C");
        // An account that forbids negative stock refuses it whatever the flag.
        let mut strict = master();
        strict.allow_negative = false;
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(strict));
        sim.batch_save(MIS_DELIVERY, json!({"Model": [big("N1"), bill("N3")]}));
        let refused = audit(&sim, "N1", true);
        assert!(
            refused.to_string().contains("仓存参数不允许负库存"),
            "{refused}"
        );
        // 2 of 3 on hand: audited, and the stock moved.
        assert_eq!(
            audit(&sim, "N3", false)["Result"]["ResponseStatus"]["IsSuccess"],
            true
        );
        let mut more = bill("N4");
        more["FEntity"][0]["FQty"] = json!(2.0);
        sim.batch_save(MIS_DELIVERY, json!({"Model": [more]}));
        assert!(
            audit(&sim, "N4", true)
                .to_string()
                .contains("仓存参数不允许负库存"),
            "only 1 left"
        );
    }

    #[test]
    fn base_data_answers_the_preflight_queries() {
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(master()));
        let rows = sim.query(
            &json!({"FormId": "BD_STOCK", "FieldKeys": "FNumber,FUseOrgId.FNumber,FIsOpenLocation",
            "FilterString": "FNumber in ('CK002','CK404')"}),
        );
        assert_eq!(rows, json!([["CK002", "100", true]]));
        let rows = sim.query(&json!({"FormId": "BD_MATERIAL", "FieldKeys": "FNumber,FBaseUnitId.FNumber,FIsBatchManage",
            "FilterString": "FNumber='LOT-1'"}));
        assert_eq!(
            rows,
            json!([["LOT-1", "Pcs", true], ["LOT-1", "Pcs", true]])
        );
        let bad = sim.query(&json!({"FormId": "BD_STOCK", "FieldKeys": "FNumber", "FilterString": "FName like 'x%'"}));
        assert!(bad.to_string().contains("过滤条件不合法"), "{bad}");
    }

    #[test]
    fn a_deleted_bill_is_gone_with_its_stock_movement_and_its_number_is_free() {
        let sim = KingdeeSim::new(KingdeeCredentials::default(), Some(master()));
        sim.batch_save(MIS_DELIVERY, json!({"Model": [bill("N1")]}));
        sim.operate(false, MIS_DELIVERY, &json!({"Numbers": ["N1"]}));
        sim.operate(
            true,
            MIS_DELIVERY,
            &json!({"Numbers": ["N1"], "InterationFlags": "STK_InvCheckResult"}),
        );
        assert_eq!(sim.bills()[0].status, "C");
        assert!(
            sim.store().moved.values().any(|q| *q != 0.0),
            "audited: moved"
        );
        assert!(sim.delete_bill(MIS_DELIVERY, "N1"));
        assert!(!sim.delete_bill(MIS_DELIVERY, "N1"), "gone");
        assert!(sim.bills().is_empty());
        assert!(
            sim.store().moved.values().all(|q| *q == 0.0),
            "the movement is reversed"
        );
        let again = sim.batch_save(MIS_DELIVERY, json!({"Model": [bill("N1"), bill("N2")]}));
        assert_eq!(
            again["Result"]["ResponseStatus"]["IsSuccess"], true,
            "{again}"
        );
        let ids: BTreeSet<i64> = sim.bills().iter().map(|b| b.id).collect();
        assert_eq!(ids.len(), 2, "a deleted bill's FID is not given again");
        assert!(!ids.contains(&100_001), "{ids:?}");
        // Operations and queries find bills by number after a delete moved them.
        assert!(sim.delete_bill(MIS_DELIVERY, "N1"));
        let submitted = sim.operate(false, MIS_DELIVERY, &json!({"Numbers": ["N2"]}));
        assert_eq!(
            submitted["Result"]["ResponseStatus"]["IsSuccess"], true,
            "{submitted}"
        );
        let rows = sim.query(&json!({"FormId": MIS_DELIVERY, "FieldKeys": "FBillNo,FDocumentStatus", "FilterString": "FBillNo='N2'"}));
        assert_eq!(rows, json!([["N2", "B"]]));
    }
}
