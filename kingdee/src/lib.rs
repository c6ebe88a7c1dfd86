//! Kingdee Cloud Galaxy (金蝶云星空) WebAPI client: signed-header authentication, `BatchSave`
//! read bill by bill, `ExecuteBillQuery`.
//!
//! A BatchSave is not all-or-nothing: every bill is settled by its own entry in
//! `SuccessEntitys` or `Errors`, keyed by `DIndex`, whatever `IsSuccess` says. A transport
//! failure, an HTTP error, a `response_error:` body or an unreadable answer is
//! [`KingdeeError::is_transient`]: Kingdee may have committed, so the caller retries and lets
//! the bill-number uniqueness tell it what was saved.

mod answer;
mod config;
pub mod events;
pub mod sign;

use answer::body_start;
pub use answer::{is_session_lost, read_batch_save, read_login, read_query};
pub use config::{AfterSave, KingdeeAuth, KingdeeConfig};

use std::sync::Arc;
use std::time::Instant;

use common::config::Secret;
use common::telemetry::Metrics;
use events::{CallMetrics, Op, Outcome};
use serde_json::{Value, json};
use tracing::debug;

/// Service name prefix.
pub const SERVICE_PREFIX: &str = "Kingdee.BOS.WebApi.ServicesStub.";
/// BatchSave.
pub const BATCH_SAVE: &str = "DynamicFormService.BatchSave";
/// ExecuteBillQuery.
pub const EXECUTE_BILL_QUERY: &str = "DynamicFormService.ExecuteBillQuery";
/// MsgCode of a lost session.
pub const MSG_SESSION_LOST: i64 = 1;
/// MsgCodes that describe a passing condition rather than the bill: server exception (4),
/// database (6), bill locked by another user (13), call limit (14). The one list of them.
pub const TRANSIENT_MSG_CODES: [i64; 4] = [4, 6, 13, 14];
/// MsgCode of a call refused for permission or authentication: no bill was looked at.
pub const MSG_NO_PERMISSION: i64 = 2;

/// The status Kingdee's web server answers a request body too large for it with: the same
/// request will never pass, so its bills are refused rather than retried.
pub const HTTP_TOO_LARGE: u16 = 413;

/// A failed Kingdee call (the call as a whole; bills have their own results).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KingdeeError {
    /// Connection failure or timeout: the call may or may not have been carried out.
    #[error("cannot reach kingdee: {0}")]
    Transport(String),
    /// HTTP error status. 413 (the request is too large) is final; others are transient.
    #[error("kingdee answered HTTP {0}")]
    Http(u16),
    /// Kingdee answered with a redirect, which is never followed (it would carry the
    /// credentials to another host): a configuration error naming the target host.
    #[error("kingdee {0}")]
    Redirect(String),
    /// A server exception (`response_error:` body).
    #[error("kingdee server exception: {0}")]
    Server(String),
    /// The answer is not the documented envelope.
    #[error("unreadable answer from kingdee ({reason}); body starts with: {start}")]
    Body {
        /// What was wrong.
        reason: String,
        /// First bytes of the body.
        start: String,
    },
    /// The call as a whole was refused (session, permission, parameters).
    #[error("kingdee refused the call (MsgCode {msg_code}): {message}")]
    Refused {
        /// Kingdee's MsgCode.
        msg_code: i64,
        /// Its messages, joined.
        message: String,
    },
    /// The credentials cannot sign a request.
    #[error(transparent)]
    Credentials(#[from] sign::BadAppId),
}

impl KingdeeError {
    /// Worth retrying later: the bills' fate is unknown or the failure passes.
    pub fn is_transient(&self) -> bool {
        match self {
            KingdeeError::Http(status) => *status != HTTP_TOO_LARGE,
            KingdeeError::Transport(_) | KingdeeError::Server(_) | KingdeeError::Body { .. } => {
                true
            }
            KingdeeError::Redirect(_) => false,
            KingdeeError::Refused { msg_code, .. } => {
                *msg_code == MSG_SESSION_LOST || TRANSIENT_MSG_CODES.contains(msg_code)
            }
            KingdeeError::Credentials(_) => false,
        }
    }
}

/// One entry of `Errors`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BillError {
    /// Field at fault, when Kingdee names one.
    #[serde(rename = "FieldName")]
    pub field_name: Option<String>,
    /// Kingdee's message.
    #[serde(rename = "Message")]
    pub message: String,
}

/// Operations after a save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `DynamicFormService.Submit`.
    Submit,
    /// `DynamicFormService.Audit`.
    Audit,
}

impl Operation {
    fn service(self) -> &'static str {
        match self {
            Operation::Submit => "DynamicFormService.Submit",
            Operation::Audit => "DynamicFormService.Audit",
        }
    }
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Operation::Submit => "submit",
            Operation::Audit => "audit",
        }
    }
}

impl BillError {
    /// "Already audited" (for Submit also "already submitted"): doing `op` again changes
    /// nothing. Matched per operation: an Audit refusal such as "状态不是已提交" is no success.
    pub fn is_already_done(&self, op: Operation) -> bool {
        let m = &self.message;
        let audited = ["已经审核", "单据已审核"].iter().any(|x| m.contains(x));
        let submitted = ["已经提交", "不能重复提交"].iter().any(|x| m.contains(x));
        match op {
            Operation::Audit => audited,
            Operation::Submit => audited || submitted,
        }
    }

    /// "Bill number already used" (违反字段唯一性要求 … 已经被使用).
    pub fn is_duplicate_bill_no(&self) -> bool {
        self.field_name.as_deref() == Some("FBillNo")
            && (self.message.contains("唯一") || self.message.contains("已经被使用"))
    }
}

/// The result of one bill in a BatchSave.
#[derive(Debug, Clone, PartialEq)]
pub enum BillResult {
    /// Saved.
    Saved {
        /// Its `FID`.
        id: Option<i64>,
        /// Its number.
        number: Option<String>,
    },
    /// Refused, with every error Kingdee gave for it.
    Failed {
        /// The errors.
        errors: Vec<BillError>,
        /// The response's MsgCode.
        msg_code: i64,
    },
    /// Kingdee said nothing about this bill.
    Missing,
}

/// A client for one Kingdee account.
#[derive(Clone)]
pub struct KingdeeClient {
    http: reqwest::Client,
    base_url: String,
    site_path: String,
    creds: sign::Credentials,
    auth: KingdeeAuth,
    password: Secret,
    allow_negative_stock: bool,
    after_save: AfterSave,
    sessions: Arc<Sessions>,
    calls: Option<CallMetrics>,
}

/// Login sessions, one per call in flight: Kingdee serves one call at a time per session, so
/// parallel calls need sessions of their own.
struct Sessions {
    slots: tokio::sync::Semaphore,
    idle: std::sync::Mutex<Vec<String>>,
}

impl Sessions {
    fn new(slots: usize) -> Self {
        Self {
            slots: tokio::sync::Semaphore::new(slots.max(1)),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }
    fn take(&self) -> Option<String> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }
    fn give_back(&self, sid: String) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sid);
    }
}

impl std::fmt::Debug for KingdeeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KingdeeClient")
            .field("base_url", &self.base_url)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl KingdeeClient {
    /// A client from the `[kingdee]` section; with a session authentication, up to
    /// `concurrency` calls run at once, each on a session of its own.
    pub fn new(
        config: &KingdeeConfig,
        concurrency: usize,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, KingdeeError> {
        let trusted = config
            .trusted()
            .map_err(|e| KingdeeError::Transport(e.to_string()))?;
        let http = common::http::client_trusting(config.timeout.0, &trusted).map_err(from_http)?;
        let base_url = config.base_url.trim_end_matches('/').to_string();
        let site_path = reqwest::Url::parse(&base_url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let creds = sign::Credentials {
            acct_id: config.acct_id.expose().to_string(),
            user_name: config.user_name.expose().to_string(),
            app_id: config.app_id.expose().to_string(),
            app_secret: config.app_secret.expose().to_string(),
            lcid: config.lcid,
            org_num: config.org_num.clone(),
        };
        if config.auth != KingdeeAuth::Password {
            sign::client_sec(&creds.app_id)?;
        }
        Ok(Self {
            http,
            base_url,
            site_path,
            creds,
            auth: config.auth,
            password: config.password.clone(),
            allow_negative_stock: config.allow_negative_stock,
            after_save: config.after_save,
            sessions: Arc::new(Sessions::new(concurrency)),
            calls: metrics.as_deref().map(CallMetrics::new),
        })
    }

    /// Posts `{"parameters": [...]}` to a service, authenticated as configured; on a lost
    /// session, logs in again and resends once. Returns the raw body.
    async fn post(&self, service: &str, parameters: Value) -> Result<Vec<u8>, KingdeeError> {
        if self.auth == KingdeeAuth::Signature {
            return self.send(service, &parameters, None).await;
        }
        // Permits are never closed; an error here cannot happen, but is not a reason to panic.
        let _slot = self.sessions.slots.acquire().await.ok();
        let sid = match self.sessions.take() {
            Some(sid) => sid,
            None => self.login().await?,
        };
        let body = self.send(service, &parameters, Some(&sid)).await;
        let (sid, body) = match body {
            Ok(b) if is_session_lost(&b) => {
                debug!(
                    service,
                    "Kingdee session lost; logging in again and resending once."
                );
                let sid = self.login().await?;
                let again = self.send(service, &parameters, Some(&sid)).await;
                (sid, again)
            }
            other => (sid, other),
        };
        // A session whose call timed out or broke off may still be busy in Kingdee (which
        // serves one call at a time per session): drop it rather than queue behind it.
        let reusable = match &body {
            Ok(b) => !is_session_lost(b),
            Err(KingdeeError::Transport(_)) => false,
            Err(e) => e.is_transient(),
        };
        if reusable {
            self.sessions.give_back(sid);
        }
        body
    }

    /// One HTTP call: signed headers, or the session as cookie and header.
    async fn send(
        &self,
        service: &str,
        parameters: &Value,
        sid: Option<&str>,
    ) -> Result<Vec<u8>, KingdeeError> {
        let name = format!("{SERVICE_PREFIX}{service}.common.kdsvc");
        let mut request = self
            .http
            .post(format!("{}/{name}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .json(&json!({ "parameters": parameters }));
        match sid {
            Some(sid) => {
                request = request.header("kdservice-sessionid", sid).header(
                    reqwest::header::COOKIE,
                    format!("kdservice-sessionid={sid}"),
                );
            }
            None if self.auth == KingdeeAuth::Signature => {
                let path = format!("{}/{name}", self.site_path);
                for (header, value) in
                    sign::signed_headers(&self.creds, &path, &unix_now().to_string())?
                {
                    request = request.header(header, value);
                }
            }
            None => {}
        }
        let response = request.send().await.map_err(|e| transport(&e))?;
        let (status, body) = common::http::read_capped(response, common::http::MAX_ANSWER_BYTES)
            .await
            .map_err(from_http)?;
        if !(200..300).contains(&status) {
            return Err(KingdeeError::Http(status));
        }
        if let Some(rest) = body.strip_prefix(b"response_error:") {
            return Err(KingdeeError::Server(body_start(rest)));
        }
        Ok(body.to_vec())
    }

    /// Opens a session (`LoginBySign` or `ValidateUser`); returns its id.
    pub async fn login(&self) -> Result<String, KingdeeError> {
        let started = Instant::now();
        let c = &self.creds;
        let (service, parameters) = match self.auth {
            KingdeeAuth::Password => (
                "AuthService.ValidateUser",
                json!([c.acct_id, c.user_name, self.password.expose(), c.lcid]),
            ),
            _ => {
                let ts = unix_now().to_string();
                let signature =
                    sign::login_by_sign(&c.acct_id, &c.user_name, &c.app_id, &c.app_secret, &ts);
                (
                    "AuthService.LoginBySign",
                    json!([c.acct_id, c.user_name, c.app_id, ts, signature, c.lcid]),
                )
            }
        };
        let result = match self.send(service, &parameters, None).await {
            Ok(body) => read_login(&body),
            Err(e) => Err(e),
        };
        self.record(Op::Login, started, Outcome::of(&result));
        result
    }

    /// Counts and times one call (see [`events`]).
    fn record(&self, op: Op, started: Instant, outcome: Outcome) {
        if let Some(calls) = &self.calls {
            calls.call(op, started, outcome);
        }
    }

    /// Saves `models` of `form_id` in one call; one result per model, in order.
    pub async fn batch_save<M: serde::Serialize>(
        &self,
        form_id: &str,
        models: &[M],
    ) -> Result<Vec<BillResult>, KingdeeError> {
        let started = Instant::now();
        // Serialised straight from the models (no copy of them as a JSON value first): a
        // call of thousands of entries costs its text once.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct SaveData<'a, M> {
            #[serde(rename = "NeedUpDateFields")]
            need_update_fields: [&'a str; 0],
            need_return_fields: [&'a str; 2],
            is_delete_entry: bool,
            sub_system_id: &'a str,
            is_verify_base_data_field: bool,
            is_entry_batch_fill: bool,
            validate_flag: bool,
            number_search: bool,
            interation_flags: &'a str,
            model: &'a [M],
        }
        let data = SaveData {
            need_update_fields: [],
            need_return_fields: ["FBillNo", "FID"],
            is_delete_entry: true,
            sub_system_id: "",
            is_verify_base_data_field: true,
            is_entry_batch_fill: true,
            validate_flag: true,
            number_search: true,
            interation_flags: if self.allow_negative_stock {
                "STK_InvCheckResult"
            } else {
                ""
            },
            model: models,
        };
        let data = serde_json::to_string(&data).map_err(|e| KingdeeError::Body {
            reason: format!("cannot encode the bills: {e}"),
            start: String::new(),
        })?;
        let result = match self.post(BATCH_SAVE, json!([form_id, data])).await {
            Ok(body) => read_batch_save(&body, models.len()),
            Err(e) => Err(e),
        };
        self.record(Op::BatchSave, started, Outcome::of_bills(&result));
        result
    }

    /// What the configuration asks after a save.
    pub fn after_save(&self) -> AfterSave {
        self.after_save
    }

    /// Submits or audits bills by number; one result per number, in order, as Kingdee gave
    /// them (the loader decides what "already audited" means).
    pub async fn operate(
        &self,
        op: Operation,
        form_id: &str,
        numbers: &[&str],
    ) -> Result<Vec<BillResult>, KingdeeError> {
        let started = Instant::now();
        // Stock moves at Audit: that is where Kingdee checks it, and where the flag that lets
        // it go negative belongs (kingdee.md, Audit's parameter table).
        let flags = match op {
            Operation::Audit if self.allow_negative_stock => "STK_InvCheckResult",
            _ => "",
        };
        let data = json!({"Numbers": numbers, "Ids": "", "InterationFlags": flags});
        let result = match self
            .post(op.service(), json!([form_id, data.to_string()]))
            .await
        {
            Ok(body) => read_batch_save(&body, numbers.len()),
            Err(e) => Err(e),
        };
        let call = match op {
            Operation::Submit => Op::Submit,
            Operation::Audit => Op::Audit,
        };
        self.record(call, started, Outcome::of_bills(&result));
        result
    }

    /// Runs a bill query; rows in `field_keys` order.
    pub async fn execute_bill_query(
        &self,
        form_id: &str,
        field_keys: &str,
        filter: &str,
    ) -> Result<Vec<Vec<Value>>, KingdeeError> {
        // Paged (`StartRow`, ordered by the first field) so that a bill with many entries is
        // never cut off at the row limit.
        let order = field_keys
            .split(',')
            .next()
            .unwrap_or("FID")
            .trim()
            .to_string();
        let mut rows = Vec::new();
        loop {
            let started = Instant::now();
            let data = json!({"FormId": form_id, "FieldKeys": field_keys, "FilterString": filter,
                "OrderString": order, "TopRowCount": 0, "StartRow": rows.len(), "Limit": QUERY_PAGE,
                "SubSystemId": ""});
            let result = match self
                .post(EXECUTE_BILL_QUERY, json!([data.to_string()]))
                .await
            {
                Ok(body) => read_query(&body),
                Err(e) => Err(e),
            };
            self.record(Op::ExecuteBillQuery, started, Outcome::of(&result));
            let page = result?;
            let full = page.len() >= QUERY_PAGE;
            rows.extend(page);
            if !full {
                return Ok(rows);
            }
        }
    }
}

/// Rows per ExecuteBillQuery call.
pub const QUERY_PAGE: usize = 2000;

use common::http::unix_now;

/// A redirect is a configuration error; an answer over the cap or cut off leaves the bills'
/// fate unknown, like a transport failure.
fn from_http(err: common::http::HttpError) -> KingdeeError {
    match err {
        common::http::HttpError::Redirect { .. } => KingdeeError::Redirect(err.to_string()),
        other => KingdeeError::Transport(other.to_string()),
    }
}

fn transport(err: &reqwest::Error) -> KingdeeError {
    KingdeeError::Transport(common::http::transport_message(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_results_are_read_per_dindex_whatever_is_success_says() {
        let body = r#"{"Result":{"ResponseStatus":{"ErrorCode":500,"IsSuccess":false,
            "Errors":[{"FieldName":"FBillNo","Message":"违反字段唯一性要求：编码唯一。[B0]在当前系统中已经被使用。","DIndex":0},
                      {"FieldName":"FStockId","Message":"仓库字段必录","DIndex":2},
                      {"FieldName":null,"Message":"第2条","DIndex":"2"}],
            "SuccessEntitys":[{"Id":140670,"Number":"B1","DIndex":1}],
            "SuccessMessages":[],"MsgCode":11},"NeedReturnData":[{}]}}"#;
        let r = read_batch_save(body.as_bytes(), 4).expect("readable");
        match &r[0] {
            BillResult::Failed { errors, .. } => assert!(errors[0].is_duplicate_bill_no()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r[1],
            BillResult::Saved {
                id: Some(140_670),
                number: Some("B1".into())
            }
        );
        match &r[2] {
            BillResult::Failed { errors, msg_code } => {
                assert_eq!(errors.len(), 2);
                assert_eq!(*msg_code, 11);
                assert!(!errors[0].is_duplicate_bill_no());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r[3], BillResult::Missing);
    }

    #[test]
    fn session_loss_and_unreadable_bodies_are_transient() {
        let lost = r#"{"Result":{"ResponseStatus":{"ErrorCode":500,"IsSuccess":false,"Errors":[{"FieldName":null,"Message":"会话信息已丢失，请重新登录","DIndex":0}],"SuccessEntitys":[],"SuccessMessages":[],"MsgCode":1}}}"#;
        let e = read_batch_save(lost.as_bytes(), 1).expect_err("session lost");
        assert!(e.is_transient());
        let e = read_batch_save(b"<html>", 1).expect_err("html");
        assert!(e.is_transient());
        let wrapped = format!("[[{lost}]]");
        assert!(read_query(wrapped.as_bytes()).is_err());
    }

    #[test]
    fn queries_return_rows() {
        let rows = read_query(br#"[[100001,"B1","A"]]"#).expect("rows");
        assert_eq!(rows[0][1], "B1");
        assert!(read_query(b"[]").expect("empty").is_empty());
    }
}
