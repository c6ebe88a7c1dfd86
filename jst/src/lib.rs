//! Jushuitan (聚水潭) open platform client: signed calls, tokens, pacing, the count query
//! (`/open/inventory/count/query`), paging.
//!
//! Every call is a form POST whose parameters are signed ([`sign`]); `biz` is signed as the exact
//! JSON text that is sent, and empty parameters are never sent. Calls are paced under the
//! platform's per-second and per-minute limits ([`pace`]). The access token is refreshed ahead of
//! its expiry and once on code 100, and the new pair is kept in a file so a restart uses it.
//! Responses are parsed leniently; one that cannot be understood is an error carrying the first
//! bytes of the body, never a panic.

mod config;
pub mod events;
pub mod pace;
pub mod sign;
mod token;

pub use config::{AppKind, JstConfig};
use token::fingerprint;
pub use token::{INIT_TOKEN_PATH, REFRESH_TOKEN_PATH, TokenPair, read_token_pair, token_file_for};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::Secret;
use common::messages::int_field;
use common::telemetry::Metrics;
use events::{JstEvents, Outcome};
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
    /// The answer breaks the documented contract in a way retrying will not mend: a success
    /// without the fields a page must have, paging that does not end, a redirect, an answer
    /// over the size cap. Trusting it could skip a window, so the poll stops and says why.
    #[error("jushuitan {0}")]
    Protocol(String),
}

impl JstError {
    /// Worth trying again soon: rate limits, timestamp skew, gateway and transport errors.
    pub fn is_transient(&self) -> bool {
        match self {
            JstError::Api { code, .. } => matches!(code, 180 | 199 | 200),
            JstError::Http(status) => *status >= 500 || *status == 429,
            JstError::Transport(_) | JstError::Body { .. } => true,
            JstError::Token(_) | JstError::Protocol(_) => false,
        }
    }

    /// Something only an operator can fix (bad signature, IP whitelist, permission, token).
    pub fn is_configuration(&self) -> bool {
        matches!(self, JstError::Api { code, .. } if matches!(code, 10 | 100 | 110 | 190))
            || matches!(self, JstError::Token(_))
    }

    /// The answer cannot be trusted (see [`JstError::Protocol`]): like a configuration error,
    /// it keeps the producer not ready until a poll succeeds.
    pub fn is_protocol(&self) -> bool {
        matches!(self, JstError::Protocol(_))
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
    /// Pages of the query, when JST says.
    pub page_count: Option<i64>,
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
    app_kind: AppKind,
    refresh_before: Duration,
    /// Whether the pair in use has been renewed (or read back) with a known age; a configured
    /// pair of unknown age is renewed once, at the first call.
    age_known: Arc<std::sync::atomic::AtomicBool>,
    /// Fingerprint of the configured pair: a saved pair descending from another is ignored.
    configured: String,
    events: Option<JstEvents>,
}

impl std::fmt::Debug for JstClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JstClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

pub use common::http::install_crypto_provider;

impl JstClient {
    /// A client from the `[jst]` section, with the tokens of the configuration.
    pub fn new(config: &JstConfig, metrics: Option<Arc<Metrics>>) -> Result<Self, JstError> {
        let trusted = config
            .trusted()
            .map_err(|e| JstError::Transport(e.to_string()))?;
        let http = common::http::client_trusting(config.timeout.0, &trusted).map_err(from_http)?;
        let configured = fingerprint(config.access_token.expose(), config.refresh_token.expose());
        let expires_at = config.access_token_expires_at.map(|at| at.to_utc());
        let tokens = TokenPair {
            access_token: config.access_token.expose().to_string(),
            refresh_token: config.refresh_token.expose().to_string(),
            expires_at,
            lifetime_secs: None,
            configured: Some(configured.clone()),
        };
        let client = Self {
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
            configured,
            token_file: None,
            may_refresh: config.app_kind == AppKind::Own,
            app_kind: config.app_kind,
            refresh_before: config.refresh_before.0,
            age_known: Arc::new(std::sync::atomic::AtomicBool::new(expires_at.is_some())),
            events: metrics
                .as_deref()
                .map(|m| JstEvents::new(m, config.app_kind)),
        };
        // A configured expiry is shown from the start.
        client.observe_expiry_now();
        Ok(client)
    }

    /// Documents per page asked for.
    pub fn page_size(&self) -> u32 {
        self.page_size
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
            Err(JstError::Api { code: 100, .. }) if self.app_kind == AppKind::Isv => Err(
                token::authorise_again("Jushuitan says the access token is invalid or expired"),
            ),
            other => other,
        }
    }

    /// A business call retried with jittered exponential backoff on transient failures (rate
    /// limits, timestamp skew, 5xx, timeouts, truncated bodies), up to a bound.
    pub async fn call_retrying(&self, path: &str, biz: &Value) -> Result<Value, JstError> {
        let mut delays = common::backoff::jittered(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Some(MAX_RETRIES),
        );
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
        let timestamp = i64::try_from(common::http::unix_now()).unwrap_or(0);
        let result = self.post_once(path, &params(timestamp)).await;
        if let Some(events) = &self.events {
            events.call(started, Outcome::of(&result));
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
            .map_err(|e| JstError::Transport(common::http::transport_message(&e)))?;
        let (status, body) = common::http::read_capped(response, common::http::MAX_ANSWER_BYTES)
            .await
            .map_err(from_http)?;
        if !(200..300).contains(&status) {
            return Err(JstError::Http(status));
        }
        parse_envelope(&body)
    }

    /// One page of count documents.
    pub async fn count_page(&self, query: &CountQuery, page_index: u32) -> Result<Page, JstError> {
        let data = self
            .call(COUNT_QUERY_PATH, &self.count_biz(query, page_index))
            .await?;
        read_page(data, self.page_size)
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
        read_page(data, self.page_size)
    }

    /// Every document of a window (all pages, `has_next` followed), each call retried on
    /// transient failures.
    pub async fn count_window(&self, query: &CountQuery) -> Result<Vec<Value>, JstError> {
        let mut docs = Vec::new();
        let mut paging = Paging::new(self.page_size);
        loop {
            let page = self.count_page_retrying(query, paging.page_index()).await?;
            let ids: Vec<String> = page.datas.iter().map(document_version).collect();
            let last = paging.judge(&page, &ids)?;
            docs.extend(page.datas);
            if last {
                return Ok(docs);
            }
        }
    }
}

/// The version of a document, `{io_id}@{modified}`: its message id on the queue.
pub fn document_version(doc: &Value) -> String {
    format!(
        "{}@{}",
        int_field(doc.get("io_id")).map_or_else(|| "unknown".to_string(), |i| i.to_string()),
        common::messages::text_field(doc.get("modified")).unwrap_or_default()
    )
}

/// A transport failure stays transient; a redirect or an oversized answer is a protocol error.
fn from_http(err: common::http::HttpError) -> JstError {
    match err {
        common::http::HttpError::Transport(t) => JstError::Transport(t),
        other => JstError::Protocol(other.to_string()),
    }
}

fn body_start(body: &[u8]) -> String {
    common::http::body_preview(body, 200)
}

/// Reads `{"code":0,"msg":…,"data":…}`; a non-zero code is an [`JstError::Api`].
pub fn parse_envelope(body: &[u8]) -> Result<Value, JstError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| JstError::Body {
        reason: format!("not JSON: {e}"),
        start: body_start(body),
    })?;
    let code = int_field(value.get("code")).ok_or_else(|| JstError::Body {
        reason: "no code".into(),
        start: body_start(body),
    })?;
    if code != 0 {
        // Outside text: escaped before it can reach a log or a terminal.
        let msg =
            common::http::escape(value.get("msg").and_then(Value::as_str).unwrap_or_default());
        return Err(JstError::Api { code, msg });
    }
    // Taken, not cloned: a page can hold megabytes of documents.
    Ok(value
        .get_mut("data")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

/// Reads `data` of the count query.
///
/// A page must be an object with `datas` (a list; `null` or `""` for none, since JST writes
/// absent values as `""`): a success without `data` or without `datas` is a
/// [`JstError::Protocol`] error, never an empty page, because an empty page lets the
/// checkpoint pass the window. `has_next` is read leniently (bool, text, number); without it,
/// `page_index` < `page_count` decides, and without those a full page of `page_size` means
/// there may be more (the [`Paging`] guard bounds where that leads).
pub fn read_page(mut data: Value, page_size: u32) -> Result<Page, JstError> {
    if !data.is_object() {
        return Err(JstError::Protocol(
            "answered code 0 without a data object; the page cannot be read as empty".into(),
        ));
    }
    let datas = match data.get_mut("datas").map(Value::take) {
        Some(Value::Array(items)) => items,
        Some(Value::Null) => Vec::new(),
        Some(Value::String(ref s)) if s.is_empty() => Vec::new(),
        None => {
            return Err(JstError::Protocol(
                "answered code 0 without data.datas; the page cannot be read as empty".into(),
            ));
        }
        Some(other) => {
            return Err(JstError::Body {
                reason: "data.datas is not a list".into(),
                start: body_start(other.to_string().as_bytes()),
            });
        }
    };
    let page_count = int_field(data.get("page_count"));
    let has_next = match data.get("has_next") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true") || s.trim() == "1",
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        _ => match (int_field(data.get("page_index")), page_count) {
            (Some(index), Some(count)) => index < count,
            _ => datas.len() >= page_size as usize,
        },
    };
    let data_count = int_field(data.get("data_count"));
    Ok(Page {
        datas,
        has_next,
        data_count,
        page_count,
    })
}

/// Documents one query may page through at most, whatever the answers say: half a million in
/// one window of one status, far beyond any real account (10,000 pages of 50).
pub const MAX_DOCUMENTS: u32 = 500_000;

/// Guards the paging of one pass over a query: paging ends when JST says so, and never runs on
/// when the answers contradict themselves (`has_next` forever, the same page again, pages past
/// `page_count` or `data_count`). Each such answer is a [`JstError::Protocol`] error, so the
/// poll fails and the checkpoint stays where it was.
#[derive(Debug)]
pub struct Paging {
    page_size: u32,
    page_index: u32,
    pages: std::collections::HashMap<Vec<String>, u32>,
}

impl Paging {
    /// A pass starting at page 1.
    pub fn new(page_size: u32) -> Self {
        Self {
            page_size: page_size.max(1),
            page_index: 1,
            pages: std::collections::HashMap::new(),
        }
    }

    /// The page to ask for now.
    pub fn page_index(&self) -> u32 {
        self.page_index
    }

    /// Judges the page just read: `Ok(true)` when it was the last, `Ok(false)` when the next
    /// must be asked for (and [`Paging::page_index`] moved on), an error when the answers do not
    /// add up. `ids` are the page's document versions (`io_id@modified`).
    pub fn judge(&mut self, page: &Page, ids: &[String]) -> Result<bool, JstError> {
        let index = self.page_index;
        let pages_by_count = page
            .data_count
            .and_then(|c| u64::try_from(c).ok())
            .map(|c| c.div_ceil(u64::from(self.page_size)));
        let page_count = page.page_count.and_then(|c| u64::try_from(c).ok());
        let known_last = match (page_count, pages_by_count) {
            (Some(p), Some(d)) => Some(p.max(d)),
            (p, d) => p.or(d),
        };
        if !page.datas.is_empty() {
            if let Some(last) = known_last
                && u64::from(index) > last
            {
                return Err(JstError::Protocol(format!(
                    "sent page {index} with documents although it counts {last} page(s); paging stopped"
                )));
            }
            let mut key = ids.to_vec();
            key.sort_unstable();
            if let Some(first) = self.pages.insert(key, index) {
                return Err(JstError::Protocol(format!(
                    "sent page {index} with the same documents as page {first}; paging stopped"
                )));
            }
        }
        if !page.has_next {
            // The last page by has_next, yet the same answer counts more pages: trusting
            // either could skip documents, so neither is trusted.
            if !page.datas.is_empty()
                && let Some(last) = known_last
                && u64::from(index) < last
            {
                return Err(JstError::Protocol(format!(
                    "says page {index} is the last although it counts {last} page(s); paging stopped"
                )));
            }
            return Ok(true);
        }
        if page.datas.is_empty() {
            // has_next with nothing on the page: the end when the counts agree, else a lie.
            if known_last.is_some_and(|last| u64::from(index) > last) {
                return Ok(true);
            }
            return Err(JstError::Protocol(format!(
                "sent an empty page {index} that says more pages follow; paging stopped"
            )));
        }
        let max_pages = (MAX_DOCUMENTS / self.page_size).max(1);
        if index >= max_pages {
            return Err(JstError::Protocol(format!(
                "still says more pages follow after {max_pages} pages; paging stopped"
            )));
        }
        self.page_index += 1;
        Ok(false)
    }
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
        let page = read_page(data, 50).expect("page");
        assert!(page.has_next);
        assert_eq!(page.datas.len(), 1);
        let full = read_page(
            serde_json::json!({"datas": [{"io_id": 1}, {"io_id": 2}]}),
            2,
        )
        .expect("page");
        assert!(full.has_next, "a full page without has_next may have more");
        let page = read_page(
            serde_json::json!({"page_index": 2, "page_count": 2, "datas": ""}),
            50,
        )
        .expect("page");
        assert!(!page.has_next);
        assert!(page.datas.is_empty());
    }

    fn page(
        datas: usize,
        has_next: bool,
        counts: Option<(i64, i64)>,
        first: i64,
    ) -> (Page, Vec<String>) {
        let ids: Vec<String> = (0..datas)
            .map(|i| format!("{}@m", first + i as i64))
            .collect();
        let page = Page {
            datas: ids
                .iter()
                .map(|id| serde_json::json!({ "id": id }))
                .collect(),
            has_next,
            data_count: counts.map(|c| c.0),
            page_count: counts.map(|c| c.1),
        };
        (page, ids)
    }

    #[test]
    fn paging_stops_on_answers_that_do_not_add_up() {
        // A last page that its own counts contradict.
        let mut paging = Paging::new(2);
        let (p, ids) = page(2, false, Some((6, 3)), 0);
        let e = paging.judge(&p, &ids).expect_err("contradiction");
        assert!(
            e.is_protocol() && e.to_string().contains("counts 3 page"),
            "{e}"
        );
        // The same sequence told consistently ends normally.
        let mut paging = Paging::new(2);
        for (i, last) in [(0, false), (2, false), (4, true)] {
            let (p, ids) = page(2, !last, Some((6, 3)), i);
            assert_eq!(paging.judge(&p, &ids).expect("consistent"), last);
        }
        // has_next as text "1" means more.
        let data = serde_json::json!({"has_next": "1", "datas": [{"io_id": 1}]});
        assert!(read_page(data, 50).expect("page").has_next);
        // The cap counts documents, not pages: page_size 1 may page far beyond 10,000.
        let mut paging = Paging::new(1);
        for i in 0..20_000 {
            let (p, ids) = page(1, true, None, i);
            assert!(!paging.judge(&p, &ids).expect("within the cap"));
        }
    }

    #[test]
    fn a_malformed_token_file_is_refused_without_quoting_it() {
        let dir = std::env::temp_dir().join(format!("jst2kd-token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("p.token.json");
        let client = JstClient::new(&JstConfig::default(), None).expect("client");
        for content in [
            r#"{"access_token": 12345678, "refresh_token": "rt-SECRET-1"}"#,
            r#"{"access_token": "at-SECRET-2", "refresh_token": ["rt-SECRET-3"]}"#,
            "at-SECRET-4",
        ] {
            std::fs::write(&path, content).expect("write");
            let e = client
                .clone()
                .with_token_file(path.clone())
                .expect_err("malformed");
            let text = e.to_string();
            assert!(text.contains("p.token.json"), "{text}");
            assert!(
                !text.contains("SECRET") && !text.contains("12345678"),
                "{text}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
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
