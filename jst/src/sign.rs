//! The Jushuitan signature: `md5(app_secret + name1 + value1 + name2 + value2 …)`, parameters
//! sorted by name in byte order, `sign` itself excluded, no separators and no URL-encoding.
//!
//! Tested against the official vectors. The simulator checks signatures with its own
//! implementation (`sim::sign`), tested against the same vectors, so a bug here cannot be
//! shared by client and simulator.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

/// Lowercase hex MD5 signature of `params` (a `sign` entry, if present, is ignored).
pub fn sign(app_secret: &str, params: &BTreeMap<String, String>) -> String {
    let mut hasher = Md5::new();
    hasher.update(app_secret.as_bytes());
    // BTreeMap<String, _> iterates in byte order of the names, as the platform sorts them.
    for (name, value) in params {
        if name == "sign" {
            continue;
        }
        hasher.update(name.as_bytes());
        hasher.update(value.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const SECRET: &str = "e9c5ca33fecb404b8e6cdbd0ef4a6d25";

    #[test]
    fn official_vector_token_request() {
        let p = params(&[
            ("app_key", "5b53060f23d84ddf9703056e84fa5a2d"),
            ("timestamp", "1639128407"),
            ("grant_type", "authorization_code"),
            ("charset", "utf-8"),
            ("code", "123456"),
        ]);
        assert_eq!(sign(SECRET, &p), "05e3a51e19e0883afd1882ccd309e0b9");
    }

    #[test]
    fn official_vector_business_request() {
        let p = params(&[
            ("app_key", "5b53060f23d84ddf9703056e84fa5a2d"),
            ("access_token", "d7b01bf0842a4742a9450e21ffd95f60"),
            ("timestamp", "1639128407"),
            ("charset", "utf-8"),
            ("version", "2"),
            (
                "biz",
                r#"{"page_index":"1","page_size":"100","nicks":["老板"]}"#,
            ),
            ("sign", "ignored"),
        ]);
        assert_eq!(sign(SECRET, &p), "395f5a78b446be465ac03a02491296c7");
    }
}
