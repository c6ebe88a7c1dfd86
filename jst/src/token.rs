//! The merchant's token pair: where it is kept (beside the producer's checkpoint, mode
//! 0600, written atomically), when it is renewed (ahead of expiry, once on code 100), and how
//! (refreshToken, or getInitToken without a refresh token).
//!
//! Invariant: a renewed pair is kept in memory before it is written to the file, and a
//! refresh first re-reads the file, so two processes sharing it (producer and backfill) do not
//! throw away each other's pair.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::messages::int_field;
use serde_json::Value;
use tracing::info;

use crate::{JstClient, JstError};

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
pub(crate) fn fingerprint(access: &str, refresh: &str) -> String {
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

/// Where the token pair is kept beside a checkpoint: `x.checkpoint.json` → `x.checkpoint.token.json`.
pub fn token_file_for(checkpoint: &Path) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "producer".into());
    checkpoint.with_file_name(format!("{stem}.token.json"))
}

/// First-token path.
pub const INIT_TOKEN_PATH: &str = "/openWeb/auth/getInitToken";

/// Refresh path.
pub const REFRESH_TOKEN_PATH: &str = "/openWeb/auth/refreshToken";

/// The message of a service provider's app whose token cannot be renewed.
pub(crate) fn authorise_again(why: &str) -> JstError {
    JstError::Token(format!(
        "{why}: a service-provider (ISV) app may not refresh its token (Jushuitan code 150 since 2023-08-15); the merchant must authorise the app again (https://openweb.jushuitan.com/auth?app_key=…), then put the new jst.access_token (and jst.refresh_token) in the configuration"
    ))
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

impl JstClient {
    /// Keeps the token pair in `path`: a pair found there (refreshed by an earlier run) is
    /// newer than the configuration's and replaces it; every refresh is written back.
    pub fn with_token_file(mut self, path: PathBuf) -> Result<Self, JstError> {
        if let Some(pair) = self.saved_pair(&path)? {
            if pair.expires_at.is_some() {
                self.age_known
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
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
    pub(crate) fn saved_pair(&self, path: &Path) -> Result<Option<TokenPair>, JstError> {
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
        // serde_json's message can quote the value it choked on (a token): say only where.
        let pair: TokenPair = serde_json::from_slice(&bytes).map_err(|e| {
            JstError::Token(format!(
                "token file {} is not a token pair ({:?} error at line {} column {}); remove it to start from the configured tokens",
                path.display(),
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        // Read from the client, not the token lock: `refresh` holds that lock when it reads
        // the file again.
        if pair
            .configured
            .as_ref()
            .is_some_and(|c| *c != self.configured)
        {
            info!(file = %path.display(), "The configured Jushuitan tokens changed since the saved pair; using the configured ones.");
            return Ok(None);
        }
        Ok(Some(pair))
    }

    pub(crate) fn observe_expiry_now(&self) {
        if let (Some(events), Ok(tokens)) = (&self.events, self.tokens.try_lock())
            && let Some(at) = tokens.expires_at
        {
            events.token_expires(&at);
        }
    }

    /// The current token pair (for tests and `check`).
    pub async fn tokens(&self) -> TokenPair {
        self.tokens.lock().await.clone()
    }

    /// How long before expiry the pair is renewed: `jst.refresh_before` or a tenth of the
    /// token's lifetime, whichever comes later (short test lifetimes renew too).
    fn refresh_ahead(&self, tokens: &TokenPair) -> Duration {
        let tenth = tokens
            .lifetime_secs
            .and_then(|s| u64::try_from(s).ok())
            .map(|s| Duration::from_millis(s.saturating_mul(100)));
        tenth.map_or(self.refresh_before, |t| t.min(self.refresh_before))
    }

    /// The access token to use now. A merchant's own app renews a missing pair, a configured
    /// pair of unknown age (once, at the first call: it is then kept with its expiry), and a
    /// pair about to expire. A service provider's app never renews: an expired or missing
    /// token is an error saying the merchant must authorise again.
    pub(crate) async fn fresh_token(&self) -> Result<String, JstError> {
        let tokens = self.tokens.lock().await.clone();
        let left = tokens
            .expires_at
            .map(|at| (at - chrono::Utc::now()).to_std().unwrap_or_default());
        if self.app_kind == crate::AppKind::Isv {
            if tokens.access_token.is_empty() {
                return Err(authorise_again("jst.access_token is not set"));
            }
            if left.is_some_and(|l| l.is_zero()) {
                return Err(authorise_again("the access token has expired"));
            }
            return Ok(tokens.access_token);
        }
        let due = tokens.access_token.is_empty()
            || match left {
                None => !self.age_known.load(std::sync::atomic::Ordering::SeqCst),
                Some(left) => left < self.refresh_ahead(&tokens),
            };
        if !(due && self.may_refresh) {
            return Ok(tokens.access_token);
        }
        match self.refresh(Some(&tokens.access_token)).await {
            // An early renewal that failed leaves a token that still works (or may: its age
            // is unknown): use it, and renew again at the next call.
            Err(e) if !tokens.access_token.is_empty() && left.is_none_or(|l| !l.is_zero()) => {
                tracing::warn!(error = %e, "Cannot renew the Jushuitan token ahead of its expiry; using the current one meanwhile.");
                Ok(tokens.access_token)
            }
            other => other,
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
            if saved.expires_at.is_some() {
                self.age_known
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            *tokens = saved;
            return Ok(tokens.access_token.clone());
        }
        let data = if tokens.refresh_token.is_empty() {
            self.token_call(String::new()).await?
        } else {
            match self.token_call(tokens.refresh_token.clone()).await {
                Err(JstError::Api { code: 150, .. }) => {
                    return Err(authorise_again("Jushuitan refused to refresh the token"));
                }
                // A dead refresh token: a merchant's own app asks for a first token again.
                Err(e @ JstError::Api { .. }) if !e.is_transient() => {
                    tracing::warn!(error = %e, "The Jushuitan refresh token was refused; asking for a new pair (getInitToken).");
                    self.token_call(String::new()).await?
                }
                other => other?,
            }
        };
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
        if let (Some(events), Some(at)) = (&self.events, pair.expires_at) {
            events.token_expires(&at);
        }
        self.age_known
            .store(true, std::sync::atomic::Ordering::SeqCst);
        info!(expires_at = ?pair.expires_at, "Jushuitan access token renewed.");
        Ok(pair.access_token)
    }

    /// One token call: refreshToken with `refresh_token`, or getInitToken without one.
    async fn token_call(&self, refresh_token: String) -> Result<Value, JstError> {
        let app_key = self.app_key.expose().to_string();
        let path = if refresh_token.is_empty() {
            INIT_TOKEN_PATH
        } else {
            REFRESH_TOKEN_PATH
        };
        self.post(path, |timestamp| {
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
        })
    }
}
