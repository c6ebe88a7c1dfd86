//! Jushuitan (聚水潭) open platform client: signed calls, the count query
//! (`/open/inventory/count/query`), paging.
//!
//! Every call is a form POST whose parameters are signed ([`sign`]); `biz` is signed as the exact
//! JSON text that is sent, and empty parameters are never sent. Responses are parsed leniently;
//! one that cannot be understood is an error carrying the first bytes of the body, never a panic.

pub mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use common::config::{JstConfig, Secret};
use common::messages::int_field;
use common::telemetry::Metrics;
use serde_json::{Value, json};
use tracing::warn;

/// Path of the count query.
pub const COUNT_QUERY_PATH: &str = "/open/inventory/count/query";

/// A failed JST call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JstError {
    /// The platform answered with a non-zero `code`.
    #[error("jushuitan answered code {code}: {msg}")]
    Api {
        /// The platform's code.
        code: i64,
        /// Its message.
        msg: String,
    },
    /// HTTP error status (gateway trouble).
    #[error("jushuitan answered HTTP {0}")]
    Http(u16),
    /// Connection failure or timeout.
    #[error("cannot reach jushuitan: {0}")]
    Transport(String),
    /// The body is not the documented envelope.
    #[error("unreadable answer from jushuitan ({reason}); body starts with: {start}")]
    Body {
        /// What was wrong.
        reason: String,
        /// First bytes of the body.
        start: String,
    },
}

impl JstError {
    /// Worth trying again soon: rate limits, timestamp skew, gateway and transport errors.
    pub fn is_transient(&self) -> bool {
        match self {
            JstError::Api { code, .. } => matches!(code, 180 | 199 | 200),
            JstError::Http(status) => *status >= 500 || *status == 429,
            JstError::Transport(_) | JstError::Body { .. } => true,
        }
    }

    /// Something only an operator can fix (bad signature, IP whitelist, permission, token).
    pub fn is_configuration(&self) -> bool {
        matches!(self, JstError::Api { code, .. } if matches!(code, 10 | 100 | 110 | 190))
    }

    fn outcome(&self) -> &'static str {
        match self {
            JstError::Api {
                code: 199 | 200, ..
            } => "rate_limited",
            JstError::Api { code: 100, .. } => "token_expired",
            _ => "error",
        }
    }
}

/// One page of the count query.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The documents, exactly as JST returned them.
    pub datas: Vec<Value>,
    /// More pages follow.
    pub has_next: bool,
}

/// The count query's business parameters for one window.
#[derive(Debug, Clone, PartialEq)]
pub struct CountQuery {
    /// `yyyy-MM-dd HH:mm:ss`, Beijing.
    pub modified_begin: String,
    /// `yyyy-MM-dd HH:mm:ss`, Beijing; at most 7 days after the beginning.
    pub modified_end: String,
    /// One status, when filtering.
    pub status: Option<String>,
}

/// A signed client for one app and merchant.
#[derive(Clone)]
pub struct JstClient {
    http: reqwest::Client,
    base_url: String,
    app_key: Secret,
    app_secret: Secret,
    access_token: Secret,
    page_size: u32,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for JstClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JstClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Installs the TLS crypto provider once (reqwest is built without a default one).
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl JstClient {
    /// A client from the `[jst]` section.
    pub fn new(config: &JstConfig, metrics: Option<Arc<Metrics>>) -> Result<Self, JstError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| JstError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            app_key: config.app_key.clone(),
            app_secret: config.app_secret.clone(),
            access_token: config.access_token.clone(),
            page_size: config.page_size.clamp(1, 50),
            metrics,
        })
    }

    /// The signed form parameters of a business call.
    pub fn business_params(&self, biz: &str, timestamp: i64) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        params.insert("app_key".into(), self.app_key.expose().to_string());
        params.insert(
            "access_token".into(),
            self.access_token.expose().to_string(),
        );
        params.insert("timestamp".into(), timestamp.to_string());
        params.insert("version".into(), "2".into());
        params.insert("charset".into(), "utf-8".into());
        params.insert("biz".into(), biz.to_string());
        params.retain(|_, v| !v.is_empty());
        let signature = sign::sign(self.app_secret.expose(), &params);
        params.insert("sign".into(), signature);
        params
    }

    /// One business call: sign, post, read the envelope, return `data`.
    pub async fn call(&self, path: &str, biz: &Value) -> Result<Value, JstError> {
        let started = Instant::now();
        let result = self.call_once(path, biz).await;
        if let Some(m) = &self.metrics {
            m.jst_request_seconds
                .observe(started.elapsed().as_secs_f64());
            let outcome = result.as_ref().map_or_else(JstError::outcome, |_| "ok");
            m.jst_requests.with_label_values(&[outcome]).inc();
        }
        result
    }

    async fn call_once(&self, path: &str, biz: &Value) -> Result<Value, JstError> {
        let biz_text = biz.to_string();
        let timestamp = chrono_now();
        let params = self.business_params(&biz_text, timestamp);
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .form(&params)
            .send()
            .await
            .map_err(|e| JstError::Transport(without_url(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| JstError::Transport(without_url(&e)))?;
        if !status.is_success() {
            return Err(JstError::Http(status.as_u16()));
        }
        parse_envelope(&body)
    }

    /// One page of count documents.
    pub async fn count_page(&self, query: &CountQuery, page_index: u32) -> Result<Page, JstError> {
        let mut biz = json!({
            "page_index": page_index,
            "page_size": self.page_size,
            "modified_begin": query.modified_begin,
            "modified_end": query.modified_end,
        });
        if let (Some(status), Some(obj)) = (&query.status, biz.as_object_mut()) {
            obj.insert("status".into(), Value::from(status.clone()));
        }
        let data = self.call(COUNT_QUERY_PATH, &biz).await?;
        read_page(&data)
    }

    /// One page, retried with jittered backoff on transient errors (a few times, then the error).
    pub async fn count_page_retrying(
        &self,
        query: &CountQuery,
        page_index: u32,
    ) -> Result<Page, JstError> {
        (|| self.count_page(query, page_index))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(300))
                    .with_max_delay(Duration::from_secs(10))
                    .with_jitter()
                    .with_max_times(4),
            )
            .when(JstError::is_transient)
            .notify(|err, delay| {
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "Jushuitan call failed; retrying.");
            })
            .await
    }

    /// Every document of a window (all pages, `has_next` followed).
    pub async fn count_window(&self, query: &CountQuery) -> Result<Vec<Value>, JstError> {
        let mut docs = Vec::new();
        let mut page_index = 1;
        loop {
            let page = self.count_page_retrying(query, page_index).await?;
            let empty = page.datas.is_empty();
            docs.extend(page.datas);
            if !page.has_next || empty {
                return Ok(docs);
            }
            page_index += 1;
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// reqwest errors name the URL; ours has no secret in it, but keep messages short anyway.
fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "body could not be read"
    } else {
        "request failed"
    };
    let source = std::error::Error::source(err).map(ToString::to_string);
    match source {
        Some(s) => format!("{kind}: {s}"),
        None => kind.to_string(),
    }
}

fn body_start(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.chars().filter(|c| !c.is_control()).collect()
}

/// Reads `{"code":0,"msg":…,"data":…}`; a non-zero code is an [`JstError::Api`].
pub fn parse_envelope(body: &[u8]) -> Result<Value, JstError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| JstError::Body {
        reason: format!("not JSON: {e}"),
        start: body_start(body),
    })?;
    let code = int_field(value.get("code")).ok_or_else(|| JstError::Body {
        reason: "no code".into(),
        start: body_start(body),
    })?;
    if code != 0 {
        let msg = value
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        return Err(JstError::Api { code, msg });
    }
    Ok(value.get("data").cloned().unwrap_or(Value::Null))
}

/// Reads `data` of the count query: `datas` and `has_next` (tolerating text and absence).
pub fn read_page(data: &Value) -> Result<Page, JstError> {
    let datas = match data.get("datas") {
        Some(Value::Array(items)) => items.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(_) => {
            return Err(JstError::Body {
                reason: "data.datas is not a list".into(),
                start: body_start(data.to_string().as_bytes()),
            });
        }
    };
    let has_next = match data.get("has_next") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        _ => {
            // No has_next: fall back on page_count when JST sends it.
            match (
                int_field(data.get("page_index")),
                int_field(data.get("page_count")),
            ) {
                (Some(index), Some(count)) => index < count,
                _ => false,
            }
        }
    };
    Ok(Page { datas, has_next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_read_leniently() {
        let data = parse_envelope(
            br#"{"code":"0","msg":"ok","data":{"has_next":"true","datas":[{"io_id":1}]}}"#,
        )
        .expect("ok");
        let page = read_page(&data).expect("page");
        assert!(page.has_next);
        assert_eq!(page.datas.len(), 1);
        let page = read_page(&serde_json::json!({"page_index": 2, "page_count": 2, "datas": ""}))
            .expect("page");
        assert!(!page.has_next);
        assert!(page.datas.is_empty());
    }

    #[test]
    fn errors_are_classified() {
        let e = parse_envelope(br#"{"code":199,"msg":"too fast"}"#).expect_err("api error");
        assert!(e.is_transient());
        let e = parse_envelope(br#"{"code":10,"msg":"bad sign"}"#).expect_err("api error");
        assert!(e.is_configuration() && !e.is_transient());
        let e = parse_envelope(br#"{"code":0,"data":{"datas":[{"io_id""#).expect_err("cut");
        assert!(e.is_transient());
        assert!(e.to_string().contains("body starts with"), "{e}");
    }

    #[test]
    fn empty_parameters_are_not_sent_and_the_sign_covers_biz_as_sent() {
        let config = JstConfig {
            app_key: Secret::new("k"),
            app_secret: Secret::new("s"),
            ..JstConfig::default()
        };
        let client = JstClient::new(&config, None).expect("client");
        let params = client.business_params(r#"{"a":1}"#, 1_700_000_000);
        assert!(!params.contains_key("access_token"));
        let mut unsigned = params.clone();
        unsigned.remove("sign");
        assert_eq!(params.get("sign"), Some(&sign::sign("s", &unsigned)));
        assert_eq!(params.get("biz").map(String::as_str), Some(r#"{"a":1}"#));
    }
}
