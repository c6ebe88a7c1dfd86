//! HTTP plumbing the two API clients share: how a client is built, how an answer is read, how
//! a failure is described.
//!
//! Invariants:
//! - **No redirect is followed.** A redirect would carry the signed parameters (Jushuitan's
//!   `access_token` and `app_key`) or the credentials (Kingdee's password, session) to another
//!   host; a 3xx answer is an error naming the host it points at.
//! - **No answer is read past a cap.** The body is read chunk by chunk and the read stops at
//!   [`MAX_ANSWER_BYTES`], so a hostile or broken server cannot make a worker buffer gigabytes.
//! - **No message quotes a URL or control characters**: errors are short, and a preview of a
//!   body is escaped before it reaches a log or a terminal.

use std::time::Duration;

/// The largest answer a client reads (64 MiB). A page of 50 Jushuitan count documents or a
/// Kingdee BatchSave answer for one batch stays far below it.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// How long a TCP (and TLS) connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an answer could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Connection failure, timeout, or a body cut off.
    #[error("{0}")]
    Transport(String),
    /// The server answered with a redirect, which is never followed.
    #[error(
        "answered HTTP {status} redirecting to {target}; redirects are never followed (they would carry the credentials to another host): check the base_url"
    )]
    Redirect {
        /// The HTTP status (301, 302, 303, 307, 308).
        status: u16,
        /// The host (and scheme) the `Location` names, or `no Location`.
        target: String,
    },
    /// The body is larger than the cap.
    #[error("answer larger than {limit} bytes; read no further")]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
}

/// Installs the TLS crypto provider once (reqwest is built without a default one).
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client that follows no redirect, with the given timeout per call.
pub fn client(timeout: Duration) -> Result<reqwest::Client, HttpError> {
    client_trusting(timeout, &[])
}

/// [`client`], trusting the certificate authorities `extra` besides the usual roots (an
/// on-premise K3Cloud's private CA: `kingdee.ca_file`, `jst.ca_file`).
pub fn client_trusting(
    timeout: Duration,
    extra: &[reqwest::Certificate],
) -> Result<reqwest::Client, HttpError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(extra.iter().cloned())
        .build()
        .map_err(|e| HttpError::Transport(transport_message(&e)))
}

/// The certificates of a PEM file (`*.ca_file`); the error names `key` and the reason, never
/// the file's content.
pub fn ca_certificates(
    key: &str,
    path: &std::path::Path,
) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("`{key}`: cannot read {}: {}", path.display(), e.kind()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
        format!(
            "`{key}`: {} is not a PEM certificate bundle",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "`{key}`: {} holds no certificate (PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads an answer: its status and at most `cap` bytes of body. A redirect is an error; other
/// statuses are returned for the caller to judge.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(u16, Vec<u8>), HttpError> {
    let status = response.status();
    if status.is_redirection() {
        return Err(HttpError::Redirect {
            status: status.as_u16(),
            target: redirect_target(&response),
        });
    }
    if response
        .content_length()
        .is_some_and(|len| len > cap as u64)
    {
        return Err(HttpError::TooLarge { limit: cap });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError::Transport(transport_message(&e)))?
    {
        if body.len() + chunk.len() > cap {
            return Err(HttpError::TooLarge { limit: cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status.as_u16(), body))
}

/// `scheme://host[:port]` of a redirect's `Location` (never its path or query, which may hold
/// parameters), escaped for printing.
fn redirect_target(response: &reqwest::Response) -> String {
    let Some(location) = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "no Location".into();
    };
    match response.url().join(location) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("?");
            match url.port() {
                Some(port) => escape(&format!("{}://{host}:{port}", url.scheme())),
                None => escape(&format!("{}://{host}", url.scheme())),
            }
        }
        Err(_) => "an unreadable Location".into(),
    }
}

/// A short description of a reqwest failure, without the URL.
pub fn transport_message(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "body could not be read"
    } else {
        "request failed"
    };
    // The whole chain of causes (a refused certificate is three levels down), never the
    // request itself: its URL can carry signed parameters and tokens.
    let mut text = kind.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let part = escape(&c.to_string());
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The first `max` bytes of a body as text, control characters escaped.
pub fn body_preview(body: &[u8], max: usize) -> String {
    escape(&String::from_utf8_lossy(&body[..body.len().min(max)]))
}

/// Text from outside (an API's message, a header, a message id) made safe to print for a
/// person: control characters (escape sequences, newlines, carriage returns, bidi overrides)
/// become `\u{…}` escapes, so they cannot move the cursor, recolour a terminal or forge a log
/// line.
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Unix seconds now (0 before 1970, which no signature will accept anyway).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain 文本"), "plain 文本");
        assert_eq!(escape("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\u{a}c");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(body_preview(b"\x1b]0;t\x07ok", 100), "\\u{1b}]0;t\\u{7}ok");
    }
}
