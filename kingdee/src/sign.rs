//! Kingdee's signed headers (what the official SDKs send) and the LoginBySign signature.
//!
//! Tested against vectors computed with the official Python SDK. The simulator checks
//! signatures with its own implementation (`sim::sign`), tested against the same vectors, so a
//! bug here cannot be shared by client and simulator.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Mixed into the client secret by the SDKs.
const CLIENT_SEC_MASK: &[u8; 32] = b"0054f397c6234378b09ca7d3e5debce7";

/// Why credentials cannot be used for signing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kingdee.app_id must look like 123456_ followed by 32 base64 characters")]
pub struct BadAppId;

/// The client id: the part of `app_id` before `_`.
pub fn client_id(app_id: &str) -> Result<&str, BadAppId> {
    app_id.split_once('_').map(|(id, _)| id).ok_or(BadAppId)
}

/// The HMAC key of `X-Api-Signature`: the 32-character part of `app_id` after `_`,
/// base64-decoded, XORed with the SDKs' mask, base64-encoded again.
pub fn client_sec(app_id: &str) -> Result<String, BadAppId> {
    let (_, secret) = app_id.split_once('_').ok_or(BadAppId)?;
    let raw = STANDARD.decode(secret).map_err(|_| BadAppId)?;
    let mixed: Vec<u8> = raw
        .iter()
        .zip(CLIENT_SEC_MASK.iter().cycle())
        .map(|(a, b)| a ^ b)
        .collect();
    Ok(STANDARD.encode(mixed))
}

/// `base64(lowercase_hex(HMAC-SHA256(key, message)))`, the SDKs' signature encoding.
pub fn hmac_hex_b64(key: &[u8], message: &[u8]) -> String {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(message);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    STANDARD.encode(hex)
}

/// URL-encodes a path the way the SDKs do for the string to sign (`/` becomes `%2F`).
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 2);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `X-Api-Signature` for a POST to `path` at `timestamp` (also the nonce).
pub fn api_signature(client_sec: &str, path: &str, timestamp: &str) -> String {
    let to_sign = format!(
        "POST\n{}\n\nx-api-nonce:{timestamp}\nx-api-timestamp:{timestamp}\n",
        encode_path(path)
    );
    hmac_hex_b64(client_sec.as_bytes(), to_sign.as_bytes())
}

/// The plain app data: `{acct_id},{user_name},{lcid},{org_num}`.
pub fn app_data_plain(acct_id: &str, user_name: &str, lcid: u32, org_num: &str) -> String {
    format!("{acct_id},{user_name},{lcid},{org_num}")
}

/// `X-Kd-Signature`.
pub fn kd_signature(app_secret: &str, app_id: &str, app_data_plain: &str) -> String {
    hmac_hex_b64(
        app_secret.as_bytes(),
        format!("{app_id}{app_data_plain}").as_bytes(),
    )
}

/// Credentials of the signed-header authentication.
#[derive(Clone)]
pub struct Credentials {
    /// Data centre id.
    pub acct_id: String,
    /// Integration user.
    pub user_name: String,
    /// `123456_…`.
    pub app_id: String,
    /// 32 hex characters.
    pub app_secret: String,
    /// Language.
    pub lcid: u32,
    /// Organisation number.
    pub org_num: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// Every signed header of one call to `path` at `timestamp` (Unix seconds as text).
pub fn signed_headers(
    creds: &Credentials,
    path: &str,
    timestamp: &str,
) -> Result<Vec<(&'static str, String)>, BadAppId> {
    let client_sec = client_sec(&creds.app_id)?;
    let plain = app_data_plain(&creds.acct_id, &creds.user_name, creds.lcid, &creds.org_num);
    Ok(vec![
        ("X-Api-ClientID", client_id(&creds.app_id)?.to_string()),
        ("X-Api-Auth-Version", "2.0".to_string()),
        ("x-api-timestamp", timestamp.to_string()),
        ("x-api-nonce", timestamp.to_string()),
        (
            "x-api-signheaders",
            "x-api-timestamp,x-api-nonce".to_string(),
        ),
        (
            "X-Api-Signature",
            api_signature(&client_sec, path, timestamp),
        ),
        ("X-Kd-Appkey", creds.app_id.clone()),
        ("X-Kd-Appdata", STANDARD.encode(plain.as_bytes())),
        (
            "X-Kd-Signature",
            kd_signature(&creds.app_secret, &creds.app_id, &plain),
        ),
    ])
}

/// The LoginBySign `sign`: SHA-256 hex of the five values sorted ordinally and concatenated.
pub fn login_by_sign(
    acct_id: &str,
    user_name: &str,
    app_id: &str,
    app_secret: &str,
    timestamp: &str,
) -> String {
    let mut parts = [acct_id, user_name, app_id, app_secret, timestamp];
    parts.sort_unstable();
    Sha256::digest(parts.concat().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_ID: &str = "123456_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY";
    const APP_SECRET: &str = "0123456789abcdef0123456789abcdef";
    const PATH: &str =
        "/k3cloud/Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.BatchSave.common.kdsvc";

    fn creds() -> Credentials {
        Credentials {
            acct_id: "5f0000000000aa".into(),
            user_name: "apiuser".into(),
            app_id: APP_ID.into(),
            app_secret: APP_SECRET.into(),
            lcid: 2052,
            org_num: "0".into(),
        }
    }

    #[test]
    fn official_sdk_vector_signed_headers() {
        assert_eq!(
            client_sec(APP_ID).as_deref(),
            Ok("MTI2MGM1Pj9qPDk/OT04KHMiKnd0IXMr")
        );
        let headers = signed_headers(&creds(), PATH, "1700000000").expect("signs");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("X-Api-Signature"),
            Some(
                "MWJkNDRhM2Q2Y2QyYzUyNDY0N2ZlMGE4MmMyODE3YzA3YjBmZWZmY2RmMTE0OWZkNGFhZjA5ZDI0M2EzNzY5Mg=="
            )
        );
        assert_eq!(
            get("X-Kd-Appdata"),
            Some("NWYwMDAwMDAwMDAwYWEsYXBpdXNlciwyMDUyLDA=")
        );
        assert_eq!(
            get("X-Kd-Signature"),
            Some(
                "YmE0ZWI4OTAwOTMyODg1NGU5ODI5MWNlYmRkYmVkY2EyOWI4MWRkNjNhMTZhYjdlNTMxYWMzOTBlZTM4OGEyMA=="
            )
        );
        assert_eq!(get("X-Api-ClientID"), Some("123456"));
    }

    #[test]
    fn official_sdk_vector_login_by_sign() {
        assert_eq!(
            login_by_sign(
                "5f0000000000aa",
                "apiuser",
                APP_ID,
                APP_SECRET,
                "1700000000"
            ),
            "77b5b7ca591428a98602e4e3406aed6903b29527cb4e6b9a7b7c322349cf53f8"
        );
    }

    #[test]
    fn a_malformed_app_id_is_an_error() {
        assert_eq!(client_sec("no-underscore"), Err(BadAppId));
        assert_eq!(client_sec("1_not base64!"), Err(BadAppId));
    }
}
