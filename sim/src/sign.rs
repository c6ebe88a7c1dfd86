//! The two services' signature checks, as the services perform them.
//!
//! Written from the published descriptions of the algorithms (Jushuitan's open-platform
//! signature; Kingdee's signed headers and LoginBySign, as the official SDKs compute them) and
//! tested against the official vectors below, independently of the clients' signing code
//! (`jst::sign`, `kingdee::sign`): a simulator plays the service, not our code, so a bug in a
//! client cannot be shared by the simulator and pass unnoticed. This crate depends on neither
//! client.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Jushuitan: `sign` = lowercase hex MD5 of `app_secret` followed by every other parameter's
/// name and value, names sorted in ascending byte order, with no separator and no encoding.
pub fn jst_expected_sign(app_secret: &str, params: &HashMap<String, String>) -> String {
    let mut names: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|name| *name != "sign")
        .collect();
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut text = String::from(app_secret);
    for name in names {
        text.push_str(name);
        text.push_str(&params[name]);
    }
    lower_hex(&Md5::digest(text.as_bytes()))
}

/// The mask the Kingdee SDKs XOR into the secret part of `app_id`.
const KINGDEE_MASK: &str = "0054f397c6234378b09ca7d3e5debce7";

/// Kingdee: the HMAC key of `X-Api-Signature`, from `app_id` = `{client id}_{32 base64 chars}`:
/// the base64 part decoded, XORed byte by byte with [`KINGDEE_MASK`], base64-encoded again.
pub fn kingdee_client_sec(app_id: &str) -> Option<String> {
    let secret = &app_id[app_id.find('_')? + 1..];
    let decoded = STANDARD.decode(secret).ok()?;
    let mask = KINGDEE_MASK.as_bytes();
    let mixed: Vec<u8> = (0..decoded.len())
        .map(|i| decoded[i] ^ mask[i % mask.len()])
        .collect();
    Some(STANDARD.encode(mixed))
}

/// Kingdee's signature encoding: base64 of the lowercase hex HMAC-SHA256.
fn kingdee_hmac(key: &str, message: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(message.as_bytes());
    STANDARD.encode(lower_hex(&mac.finalize().into_bytes()))
}

/// Kingdee: `X-Api-Signature` expected for a POST to `path` with this nonce and timestamp:
/// the string `POST\n{path, every byte but A–Z a–z 0–9 - _ . ~ percent-encoded}\n\n`
/// `x-api-nonce:{nonce}\nx-api-timestamp:{timestamp}\n`, signed with the client secret.
pub fn kingdee_api_signature(client_sec: &str, path: &str, nonce: &str, timestamp: &str) -> String {
    let mut encoded = String::new();
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(char::from(byte));
            }
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    let text = format!("POST\n{encoded}\n\nx-api-nonce:{nonce}\nx-api-timestamp:{timestamp}\n");
    kingdee_hmac(client_sec, &text)
}

/// Kingdee: `X-Kd-Signature` expected for the decoded `X-Kd-Appdata`: the app id followed by
/// the app data, signed with the app secret.
pub fn kingdee_kd_signature(app_secret: &str, app_id: &str, app_data: &str) -> String {
    kingdee_hmac(app_secret, &format!("{app_id}{app_data}"))
}

/// Kingdee LoginBySign: lowercase hex SHA-256 of the five values (account, user, app id, app
/// secret, timestamp) sorted in ordinal order and joined without separator.
pub fn kingdee_login_sign(values: [&str; 5]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    lower_hex(&Sha256::digest(sorted.join("").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jushuitan's official vectors (its open-platform documentation).
    #[test]
    fn jushuitan_official_vectors() {
        let secret = "e9c5ca33fecb404b8e6cdbd0ef4a6d25";
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let token = params(&[
            ("app_key", "5b53060f23d84ddf9703056e84fa5a2d"),
            ("timestamp", "1639128407"),
            ("grant_type", "authorization_code"),
            ("charset", "utf-8"),
            ("code", "123456"),
        ]);
        assert_eq!(
            jst_expected_sign(secret, &token),
            "05e3a51e19e0883afd1882ccd309e0b9"
        );
        let business = params(&[
            ("app_key", "5b53060f23d84ddf9703056e84fa5a2d"),
            ("access_token", "d7b01bf0842a4742a9450e21ffd95f60"),
            ("timestamp", "1639128407"),
            ("charset", "utf-8"),
            ("version", "2"),
            (
                "biz",
                r#"{"page_index":"1","page_size":"100","nicks":["老板"]}"#,
            ),
            ("sign", "whatever the client sent"),
        ]);
        assert_eq!(
            jst_expected_sign(secret, &business),
            "395f5a78b446be465ac03a02491296c7"
        );
    }

    /// Kingdee's vectors, computed with the official Python SDK (kingdee-cdp-webapi-sdk 8.2.0).
    #[test]
    fn kingdee_official_sdk_vectors() {
        let app_id = "123456_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY";
        let app_secret = "0123456789abcdef0123456789abcdef";
        let client_sec = kingdee_client_sec(app_id).expect("app id");
        assert_eq!(client_sec, "MTI2MGM1Pj9qPDk/OT04KHMiKnd0IXMr");
        let path =
            "/k3cloud/Kingdee.BOS.WebApi.ServicesStub.DynamicFormService.BatchSave.common.kdsvc";
        assert_eq!(
            kingdee_api_signature(&client_sec, path, "1700000000", "1700000000"),
            "MWJkNDRhM2Q2Y2QyYzUyNDY0N2ZlMGE4MmMyODE3YzA3YjBmZWZmY2RmMTE0OWZkNGFhZjA5ZDI0M2EzNzY5Mg=="
        );
        let app_data = "5f0000000000aa,apiuser,2052,0";
        assert_eq!(
            STANDARD.encode(app_data),
            "NWYwMDAwMDAwMDAwYWEsYXBpdXNlciwyMDUyLDA="
        );
        assert_eq!(
            kingdee_kd_signature(app_secret, app_id, app_data),
            "YmE0ZWI4OTAwOTMyODg1NGU5ODI5MWNlYmRkYmVkY2EyOWI4MWRkNjNhMTZhYjdlNTMxYWMzOTBlZTM4OGEyMA=="
        );
        assert_eq!(
            kingdee_login_sign([
                "5f0000000000aa",
                "apiuser",
                app_id,
                app_secret,
                "1700000000"
            ]),
            "77b5b7ca591428a98602e4e3406aed6903b29527cb4e6b9a7b7c322349cf53f8"
        );
        assert_eq!(kingdee_client_sec("no-underscore"), None);
        assert_eq!(kingdee_client_sec("1_not base64!"), None);
    }
}
