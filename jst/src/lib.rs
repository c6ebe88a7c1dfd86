//! Jushuitan (聚水潭) open platform client: signed calls, tokens, pacing, the count query
//! (`/open/inventory/count/query`), paging.
//!
//! Every call is a form POST whose parameters are signed ([`sign`]); `biz` is signed as the exact
//! JSON text that is sent, and empty parameters are never sent. Calls are paced under the
//! platform's per-second and per-minute limits ([`pace`]). The access token is refreshed ahead of
//! its expiry and once on code 100, and the new pair is kept in a file so a restart uses it.
//! Responses are parsed leniently; one that cannot be understood is an error carrying the first
//! bytes of the body, never a panic.

pub mod pace;
pub mod sign;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use common::config::{JstConfig, Secret};
use common::messages::int_field;
use common::telemetry::Metrics;
use serde_json::{Value, json};
use tracing::{info, warn};

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
    /// The token pair cannot be obtained, read or kept.
    #[error("jushuitan token: {0}")]
    Token(String),
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
            JstError::Token(_) => false,
        }
    }

    /// Something only an operator can fix (bad signature, IP whitelist, permission, token).
    pub fn is_configuration(&self) -> bool {
        matches!(self, JstError::Api { code, .. } if matches!(code, 10 | 100 | 110 | 190))
            || matches!(self, JstError::Token(_))
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
    /// Documents matching the query, when JST says.
    pub data_count: Option<i64>,
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

/// The access and refresh token of the merchant, and when the access token expires.
#[derive(Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenPair {
    /// Sent with every business call.
    pub access_token: String,
    /// Exchanged for a new pair.
    pub refresh_token: String,
    /// When the access token stops working, when known.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its lifetime in seconds as the platform gave it (`expires_in`), when known.
    #[serde(default)]
    pub lifetime_secs: Option<i64>,
    /// Fingerprint of the configured pair this one descends from: when the configuration gets
    /// a new pair (an operator re-authorised the app), the configuration wins over the file.
    #[serde(default)]
    pub configured: Option<String>,
}

/// A fingerprint of a configured token pair (not reversible, safe to store).
fn fingerprint(access: &str, refresh: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(format!("jst2kd:{access}:{refresh}").as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Refresh this long before the access token expires (or at 10% of its life left when that is
/// shorter: simulators hand out short-lived tokens).
const REFRESH_AHEAD: Duration = Duration::from_secs(24 * 3600);
/// Retries of a transient failure before a call gives up.
const MAX_RETRIES: usize = 5;

/// A signed, paced client for one app and merchant.
#[derive(Clone)]
pub struct JstClient {
    http: reqwest::Client,
    base_url: String,
    app_key: Secret,
    app_secret: Secret,
    page_size: u32,
    pacer: Arc<pace::Pacer>,
    tokens: Arc<tokio::sync::Mutex<TokenPair>>,
    token_file: Option<PathBuf>,
    may_refresh: bool,
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

/// Where the token pair is kept beside a checkpoint: `x.checkpoint.json` → `x.checkpoint.token.json`.
pub fn token_file_for(checkpoint: &Path) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "producer".into());
    checkpoint.with_file_name(format!("{stem}.token.json"))
}

impl JstClient {
    /// A client from the `[jst]` section, with the tokens of the configuration.
    pub fn new(config: &JstConfig, metrics: Option<Arc<Metrics>>) -> Result<Self, JstError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| JstError::Transport(e.to_string()))?;
        let tokens = TokenPair {
            access_token: config.access_token.expose().to_string(),
            refresh_token: config.refresh_token.expose().to_string(),
            expires_at: None,
            lifetime_secs: None,
            configured: Some(fingerprint(
                config.access_token.expose(),
                config.refresh_token.expose(),
            )),
        };
        Ok(Self {
            http,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            app_key: config.app_key.clone(),
            app_secret: config.app_secret.clone(),
            page_size: config.page_size.clamp(1, 50),
            pacer: Arc::new(pace::Pacer::new(
                config.rate_per_second,
                config.rate_per_minute,
            )),
            tokens: Arc::new(tokio::sync::Mutex::new(tokens)),
            token_file: None,
            may_refresh: true,
            metrics,
        })
    }

    /// Keeps the token pair in `path`: a pair found there (refreshed by an earlier run) is
    /// newer than the configuration's and replaces it; every refresh is written back.
    pub fn with_token_file(mut self, path: PathBuf) -> Result<Self, JstError> {
        if let Some(pair) = self.saved_pair(&path)? {
            if let Ok(mut tokens) = self.tokens.try_lock() {
                *tokens = pair;
            }
            self.observe_expiry_now();
        }
        self.token_file = Some(path);
        Ok(self)
    }

    /// Never refreshes the token (for `jst2kd check`: a refresh rotates the refresh token, and
    /// only the producer should do that).
    pub fn without_refresh(mut self) -> Self {
        self.may_refresh = false;
        self
    }

    /// The pair in the token file, if it descends from the configured pair.
    fn saved_pair(&self, path: &Path) -> Result<Option<TokenPair>, JstError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(JstError::Token(format!(
                    "token file {}: {e}",
                    path.display()
                )));
            }
        };
        let pair: TokenPair = serde_json::from_slice(&bytes).map_err(|e| {
            JstError::Token(format!(
                "token file {} cannot be read ({e}); remove it to start from the configured tokens",
                path.display()
            ))
        })?;
        let configured = self
            .tokens
            .try_lock()
            .ok()
            .and_then(|t| t.configured.clone());
        if pair.configured.is_some() && pair.configured != configured {
            info!(file = %path.display(), "The configured Jushuitan tokens changed since the saved pair; using the configured ones.");
            return Ok(None);
        }
        Ok(Some(pair))
    }

    fn observe_expiry_now(&self) {
        if let (Some(m), Ok(tokens)) = (&self.metrics, self.tokens.try_lock())
            && let Some(at) = tokens.expires_at
        {
            m.jst_token_expiry.set(at.timestamp() as f64);
        }
    }

    /// The current token pair (for tests and `check`).
    pub async fn tokens(&self) -> TokenPair {
        self.tokens.lock().await.clone()
    }

    /// The signed form parameters of a business call.
    pub fn business_params(
        &self,
        access_token: &str,
        biz: &str,
        timestamp: i64,
    ) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        params.insert("app_key".into(), self.app_key.expose().to_string());
        params.insert("access_token".into(), access_token.to_string());
        params.insert("timestamp".into(), timestamp.to_string());
        params.insert("version".into(), "2".into());
        params.insert("charset".into(), "utf-8".into());
        params.insert("biz".into(), biz.to_string());
        self.signed(params)
    }

    /// Drops empty parameters (never sent) and adds `sign`.
    fn signed(&self, mut params: BTreeMap<String, String>) -> BTreeMap<String, String> {
        params.retain(|_, v| !v.is_empty());
        let signature = sign::sign(self.app_secret.expose(), &params);
        params.insert("sign".into(), signature);
        params
    }

    /// One business call with a valid token: refreshed ahead of expiry, and once more when the
    /// platform answers code 100. Paced; no retry of other failures.
    pub async fn call(&self, path: &str, biz: &Value) -> Result<Value, JstError> {
        let token = self.fresh_token().await?;
        match self.call_with(path, biz, &token).await {
            Err(JstError::Api { code: 100, .. }) if self.may_refresh => {
                warn!("Jushuitan says the access token is invalid or expired; refreshing it once.");
                let token = self.refresh(Some(&token)).await?;
                self.call_with(path, biz, &token).await
            }
            other => other,
        }
    }

    /// A business call retried with jittered exponential backoff on transient failures (rate
    /// limits, timestamp skew, 5xx, timeouts, truncated bodies), up to a bound.
    pub async fn call_retrying(&self, path: &str, biz: &Value) -> Result<Value, JstError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(MAX_RETRIES)
            .build();
        loop {
            match self.call(path, biz).await {
                Err(e) if e.is_transient() => {
                    let Some(mut delay) = delays.next() else {
                        return Err(e);
                    };
                    if matches!(e, JstError::Api { code: 200, .. }) {
                        // The per-minute quota: only time frees it.
                        delay = delay.max(Duration::from_secs(10));
                    }
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Jushuitan call failed; retrying.");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    async fn call_with(&self, path: &str, biz: &Value, token: &str) -> Result<Value, JstError> {
        let biz_text = biz.to_string();
        self.post(path, |timestamp| {
            self.business_params(token, &biz_text, timestamp)
        })
        .await
    }

    /// Posts signed form parameters (built for the moment of sending), paced and measured.
    async fn post(
        &self,
        path: &str,
        params: impl Fn(i64) -> BTreeMap<String, String>,
    ) -> Result<Value, JstError> {
        self.pacer.acquire().await;
        let started = Instant::now();
        let result = self.post_once(path, &params(chrono_now())).await;
        if let Some(m) = &self.metrics {
            m.jst_request_seconds
                .observe(started.elapsed().as_secs_f64());
            let outcome = result.as_ref().map_or_else(JstError::outcome, |_| "ok");
            m.jst_requests.with_label_values(&[outcome]).inc();
        }
        result
    }

    async fn post_once(
        &self,
        path: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<Value, JstError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .form(params)
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

    /// The access token to use now, refreshed first when it is about to expire or missing.
    async fn fresh_token(&self) -> Result<String, JstError> {
        let tokens = self.tokens.lock().await.clone();
        let due = match tokens.expires_at {
            _ if tokens.access_token.is_empty() => true,
            None => false,
            Some(at) => {
                let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                left < REFRESH_AHEAD.min(lifetime_tenth(&tokens))
            }
        };
        if due && self.may_refresh {
            self.refresh(Some(&tokens.access_token)).await
        } else {
            Ok(tokens.access_token)
        }
    }

    /// Gets a new pair (refreshToken, or getInitToken without a refresh token) unless another
    /// task already replaced `stale`; persists it; returns the new access token.
    pub async fn refresh(&self, stale: Option<&str>) -> Result<String, JstError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(stale) = stale
            && tokens.access_token != stale
            && !tokens.access_token.is_empty()
        {
            return Ok(tokens.access_token.clone());
        }
        // Another process (backfill, a restarted producer) may have refreshed meanwhile: its
        // pair in the file is newer than ours.
        if let Some(file) = &self.token_file
            && let Ok(Some(saved)) = self.saved_pair(file)
            && saved.access_token != tokens.access_token
            && stale.is_some_and(|s| s != saved.access_token)
        {
            *tokens = saved;
            return Ok(tokens.access_token.clone());
        }
        let app_key = self.app_key.expose().to_string();
        let (path, refresh_token) = if tokens.refresh_token.is_empty() {
            (INIT_TOKEN_PATH, String::new())
        } else {
            (REFRESH_TOKEN_PATH, tokens.refresh_token.clone())
        };
        let data = self
            .post(path, |timestamp| {
                let mut p = BTreeMap::new();
                p.insert("app_key".to_string(), app_key.clone());
                p.insert("timestamp".to_string(), timestamp.to_string());
                p.insert("charset".to_string(), "utf-8".to_string());
                if refresh_token.is_empty() {
                    p.insert("grant_type".to_string(), "authorization_code".to_string());
                    p.insert("code".to_string(), init_code());
                } else {
                    p.insert("grant_type".to_string(), "refresh_token".to_string());
                    p.insert("refresh_token".to_string(), refresh_token.clone());
                    p.insert("scope".to_string(), "all".to_string());
                }
                self.signed(p)
            })
            .await
            .map_err(|e| match e {
                // A token answer holds secrets: never quote it.
                JstError::Body { reason, .. } => JstError::Body {
                    reason,
                    start: "(token answer withheld)".into(),
                },
                other => other,
            })?;
        let mut pair = read_token_pair(&data)?;
        pair.configured = tokens.configured.clone();
        // The old pair is dead now: keep the new one in memory first, then on disk.
        *tokens = pair.clone();
        if let Some(file) = &self.token_file {
            let kept = serde_json::to_vec_pretty(&pair)
                .map_err(|e| e.to_string())
                .and_then(|b| common::files::write_atomic(file, &b).map_err(|e| e.to_string()));
            if let Err(e) = kept {
                tracing::error!(file = %file.display(), error = %e, "Cannot keep the renewed Jushuitan token on disk; a restart would fall back to the older pair.");
            }
        }
        if let (Some(m), Some(at)) = (&self.metrics, pair.expires_at) {
            m.jst_token_expiry.set(at.timestamp() as f64);
        }
        info!(expires_at = ?pair.expires_at, "Jushuitan access token renewed.");
        Ok(pair.access_token)
    }

    /// One page of count documents.
    pub async fn count_page(&self, query: &CountQuery, page_index: u32) -> Result<Page, JstError> {
        let data = self
            .call(COUNT_QUERY_PATH, &self.count_biz(query, page_index))
            .await?;
        read_page(&data, self.page_size)
    }

    fn count_biz(&self, query: &CountQuery, page_index: u32) -> Value {
        let mut biz = json!({
            "page_index": page_index,
            "page_size": self.page_size,
            "modified_begin": query.modified_begin,
            "modified_end": query.modified_end,
        });
        if let (Some(status), Some(obj)) = (&query.status, biz.as_object_mut()) {
            obj.insert("status".into(), Value::from(status.clone()));
        }
        biz
    }

    /// One page, retried on transient failures.
    pub async fn count_page_retrying(
        &self,
        query: &CountQuery,
        page_index: u32,
    ) -> Result<Page, JstError> {
        let data = self
            .call_retrying(COUNT_QUERY_PATH, &self.count_biz(query, page_index))
            .await?;
        read_page(&data, self.page_size)
    }

    /// Every document of a window (all pages, `has_next` followed), each call retried on
    /// transient failures.
    pub async fn count_window(&self, query: &CountQuery) -> Result<Vec<Value>, JstError> {
        let mut docs = Vec::new();
        let mut page_index = 1;
        loop {
            let page = self.count_page_retrying(query, page_index).await?;
            let last = !page.has_next || page.datas.is_empty();
            docs.extend(page.datas);
            if last {
                return Ok(docs);
            }
            page_index += 1;
        }
    }
}

/// First-token path.
pub const INIT_TOKEN_PATH: &str = "/openWeb/auth/getInitToken";
/// Refresh path.
pub const REFRESH_TOKEN_PATH: &str = "/openWeb/auth/refreshToken";

/// A tenth of the token's lifetime when known (simulators hand out tokens of minutes), or
/// [`REFRESH_AHEAD`].
fn lifetime_tenth(tokens: &TokenPair) -> Duration {
    tokens
        .lifetime_secs
        .and_then(|s| u64::try_from(s).ok())
        .map_or(REFRESH_AHEAD, |s| Duration::from_secs(s / 10))
}

/// The 6 characters `getInitToken` wants as `code` (any value is accepted for one's own app).
fn init_code() -> String {
    format!("{:06}", rand::random::<u32>() % 1_000_000)
}

/// Reads `{"access_token","refresh_token","expires_in"}` of a token answer.
pub fn read_token_pair(data: &Value) -> Result<TokenPair, JstError> {
    let text = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let access_token = text("access_token")
        .ok_or_else(|| JstError::Token("the token answer has no access_token".into()))?;
    let refresh_token = text("refresh_token").unwrap_or_default();
    let lifetime_secs = int_field(data.get("expires_in")).filter(|s| *s > 0);
    let expires_at = lifetime_secs.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s));
    Ok(TokenPair {
        access_token,
        refresh_token,
        expires_at,
        lifetime_secs,
        configured: None,
    })
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

/// Reads `data` of the count query: `datas`, `has_next` (tolerating text and absence: without
/// `has_next` and `page_count`, a full page of `page_size` means there may be more).
pub fn read_page(data: &Value, page_size: u32) -> Result<Page, JstError> {
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
                _ => datas.len() >= page_size as usize,
            }
        }
    };
    let data_count = int_field(data.get("data_count"));
    Ok(Page {
        datas,
        has_next,
        data_count,
    })
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
        let page = read_page(&data, 50).expect("page");
        assert!(page.has_next);
        assert_eq!(page.datas.len(), 1);
        let full = read_page(
            &serde_json::json!({"datas": [{"io_id": 1}, {"io_id": 2}]}),
            2,
        )
        .expect("page");
        assert!(full.has_next, "a full page without has_next may have more");
        let page = read_page(
            &serde_json::json!({"page_index": 2, "page_count": 2, "datas": ""}),
            50,
        )
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
        let params = client.business_params("", r#"{"a":1}"#, 1_700_000_000);
        assert!(!params.contains_key("access_token"));
        let mut unsigned = params.clone();
        unsigned.remove("sign");
        assert_eq!(params.get("sign"), Some(&sign::sign("s", &unsigned)));
        assert_eq!(params.get("biz").map(String::as_str), Some(r#"{"a":1}"#));
    }
}
