//! `[jst]`: the Jushuitan open platform, as this client reads it.

use common::config::{ConfigError, Dur, Secret, Section, lenient, require_url};
use serde::Deserialize;

/// Which kind of app the credentials belong to: it decides how the token is renewed
/// (`../shared/apis/jushuitan.md`, "Token lifecycle for the two kinds of app").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// The merchant's own app (商家自研): refreshToken, and getInitToken when the refresh
    /// token is dead too.
    #[default]
    Own,
    /// A service provider's app (服务商): may not refresh (code 150 since 2023-08-15); the
    /// merchant authorises again when the token expires.
    Isv,
}

impl AppKind {
    /// The `app_kind` label and key value.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Own => "own",
            AppKind::Isv => "isv",
        }
    }
}

/// `[jst]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JstConfig {
    /// Open platform host, no path.
    pub base_url: String,
    /// The app's key.
    pub app_key: Secret,
    /// The app's secret (signs every call).
    pub app_secret: Secret,
    /// The merchant's access token.
    pub access_token: Secret,
    /// The merchant's refresh token.
    pub refresh_token: Secret,
    /// Documents per page, at most 50.
    #[serde(deserialize_with = "lenient::number")]
    pub page_size: u32,
    /// Most calls in any sliding second (0: no pacing).
    #[serde(deserialize_with = "lenient::number")]
    pub rate_per_second: u32,
    /// Most calls in any sliding minute (0: no pacing).
    #[serde(deserialize_with = "lenient::number")]
    pub rate_per_minute: u32,
    /// Timeout of one HTTP call.
    pub timeout: Dur,
    /// `own` (the merchant's own app) or `isv` (a service provider's app).
    pub app_kind: AppKind,
    /// Renew the access token when this much of its life is left (or a tenth of its
    /// lifetime, whichever comes later).
    pub refresh_before: Dur,
    /// When the configured access token expires, as the authorisation said (Beijing
    /// `yyyy-MM-dd HH:mm:ss` or RFC 3339). A service provider's app cannot renew: with it the
    /// expiry is shown (and alerted on) from the start. Unknown when not given.
    #[serde(deserialize_with = "expiry")]
    pub access_token_expires_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// A PEM file of certificate authorities to trust besides the usual roots (a proxy or
    /// gateway with a private CA in front of the open platform).
    pub ca_file: Option<std::path::PathBuf>,
}

fn expiry<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    common::time::parse_beijing(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom("must be a time (yyyy-MM-dd HH:mm:ss, Beijing, or RFC 3339)")
    })
}

impl Default for JstConfig {
    fn default() -> Self {
        Self {
            base_url: "https://openapi.jushuitan.com".into(),
            app_key: Secret::default(),
            app_secret: Secret::default(),
            access_token: Secret::default(),
            refresh_token: Secret::default(),
            page_size: 50,
            rate_per_second: 5,
            rate_per_minute: 100,
            timeout: Dur::secs(30),
            app_kind: AppKind::Own,
            refresh_before: Dur::secs(3 * 86_400),
            access_token_expires_at: None,
            ca_file: None,
        }
    }
}

impl Section for JstConfig {
    const NAME: &'static str = "jst";

    fn check(&self) -> Result<(), ConfigError> {
        require_url(&self.base_url, "jst.base_url")?;
        if !(1..=50).contains(&self.page_size) {
            return Err(ConfigError::key("jst.page_size", "must be 1 to 50"));
        }
        self.trusted()?;
        Ok(())
    }
}

impl JstConfig {
    /// The certificate authorities of `jst.ca_file` (none when not set).
    pub fn trusted(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        match &self.ca_file {
            None => Ok(Vec::new()),
            Some(path) => common::http::ca_certificates("jst.ca_file", path).map_err(ConfigError),
        }
    }

    /// What a client that calls needs on top: the app's key and secret. The access token may
    /// be left out: the client then asks for one (`getInitToken`).
    pub fn check_credentials(&self) -> Result<(), ConfigError> {
        for (value, key) in [
            (&self.app_key, "jst.app_key"),
            (&self.app_secret, "jst.app_secret"),
        ] {
            if value.is_empty() {
                return Err(ConfigError::key(key, "is required by the producer"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::shape;
    use common::config::testing::{TempFile, env};

    fn jst(pairs: &[(&str, &str)]) -> Result<JstConfig, ConfigError> {
        env(pairs).and_then(|l| l.section())
    }

    #[test]
    fn the_type_has_the_registered_keys() {
        shape::registered::<JstConfig>("jst").expect("matches");
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_is_a_configuration_error() {
        let e = jst(&[("JST2KD_JST__CA_FILE", "/nonexistent/ca.pem")]).expect_err("refused");
        assert!(
            e.to_string().contains("jst.ca_file") && e.to_string().contains("cannot read"),
            "{e}"
        );
        assert!(
            jst(&[])
                .expect("defaults")
                .trusted()
                .expect("none")
                .is_empty()
        );
    }

    #[test]
    fn credentials_are_required_but_not_the_access_token() {
        let e = jst(&[])
            .and_then(|c| c.check_credentials())
            .expect_err("no key");
        assert!(e.to_string().contains("jst.app_key"), "{e}");
        jst(&[
            ("JST2KD_JST__APP_KEY", "k"),
            ("JST2KD_JST__APP_SECRET", "s"),
        ])
        .and_then(|c| c.check_credentials())
        .expect("no access token needed: getInitToken");
        let e = jst(&[("JST2KD_JST__PAGE_SIZE", "51")]).expect_err("page size");
        assert!(e.to_string().contains("jst.page_size"), "{e}");
        let e = jst(&[("JST2KD_JST__BASE_URL", "ftp://x")]).expect_err("url");
        assert!(e.to_string().contains("jst.base_url"), "{e}");
    }

    #[test]
    fn every_secret_comes_from_its_file() {
        for (key, read) in [
            (
                "APP_KEY",
                (|c: &JstConfig| c.app_key.clone()) as fn(&JstConfig) -> Secret,
            ),
            ("APP_SECRET", |c| c.app_secret.clone()),
            ("ACCESS_TOKEN", |c| c.access_token.clone()),
            ("REFRESH_TOKEN", |c| c.refresh_token.clone()),
        ] {
            let file = TempFile::new(&format!("{key}-from-file\n"));
            let var = format!("JST2KD_JST__{key}_FILE");
            let c = jst(&[(&var, file.0.to_str().expect("utf-8"))]).expect(key);
            assert_eq!(read(&c).expose(), format!("{key}-from-file"));
            assert!(!format!("{c:?}").contains("from-file"), "{key} printed");
            let e = jst(&[(&var, "/no/such/file")]).expect_err("missing");
            assert!(
                e.to_string()
                    .contains(&format!("jst.{}_file", key.to_lowercase())),
                "{e}"
            );
        }
    }
}
