//! `[kingdee]`: the Kingdee Cloud Galaxy WebAPI, as this client reads it.

use common::config::{ConfigError, Dur, Secret, Section, lenient, require_url};
use serde::Deserialize;

/// How the client authenticates to Kingdee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KingdeeAuth {
    /// Signed headers on every call, as the official SDKs do.
    #[default]
    Signature,
    /// A session opened with `AuthService.LoginBySign` (app id and secret).
    LoginBySign,
    /// A session opened with `AuthService.ValidateUser` (user and password).
    Password,
}

/// The operation after a bill is saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSave {
    /// Leave the bill created (status A).
    #[default]
    None,
    /// Submit it (status B).
    Submit,
    /// Submit and audit it (status C): the stock moves.
    Audit,
}

/// `[kingdee]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KingdeeConfig {
    /// Site URL, e.g. `https://acme.ik3cloud.com/k3cloud`.
    pub base_url: String,
    /// Authentication method.
    pub auth: KingdeeAuth,
    /// Data centre (account set) id.
    pub acct_id: Secret,
    /// Integration user.
    pub user_name: Secret,
    /// Third-party app id (`123456_…`).
    pub app_id: Secret,
    /// Third-party app secret.
    pub app_secret: Secret,
    /// The user's password (`auth = "password"`).
    pub password: Secret,
    /// Language id.
    #[serde(deserialize_with = "lenient::number")]
    pub lcid: u32,
    /// Organisation number sent in the app data.
    pub org_num: String,
    /// Timeout of one HTTP call.
    pub timeout: Dur,
    /// Let stock go negative: Audit (where the stock moves) and BatchSave send
    /// `STK_InvCheckResult`.
    #[serde(deserialize_with = "lenient::boolean")]
    pub allow_negative_stock: bool,
    /// What follows a save: `none`, `submit`, or `audit` (submit, then audit; stock moves).
    pub after_save: AfterSave,
    /// A PEM file of certificate authorities to trust besides the usual roots: an
    /// on-premise K3Cloud often has a certificate from a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for KingdeeConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            auth: KingdeeAuth::Signature,
            acct_id: Secret::default(),
            user_name: Secret::default(),
            app_id: Secret::default(),
            app_secret: Secret::default(),
            password: Secret::default(),
            lcid: 2052,
            org_num: "0".into(),
            timeout: Dur::secs(60),
            allow_negative_stock: false,
            after_save: AfterSave::None,
            ca_file: None,
        }
    }
}

impl Section for KingdeeConfig {
    const NAME: &'static str = "kingdee";

    /// The values given are well formed; whether the loader has all it needs is
    /// [`KingdeeConfig::check_credentials`] (`jst2kd check` skips an unset Kingdee).
    fn check(&self) -> Result<(), ConfigError> {
        if !self.base_url.is_empty() {
            require_url(&self.base_url, "kingdee.base_url")?;
        }
        if self.auth != KingdeeAuth::Password
            && !self.app_id.is_empty()
            && !self.app_id.expose().contains('_')
        {
            return Err(ConfigError::key(
                "kingdee.app_id",
                "must look like 123456_xxxxxxxx (the id Kingdee issued)",
            ));
        }
        self.trusted()?;
        Ok(())
    }
}

impl KingdeeConfig {
    /// The certificate authorities of `kingdee.ca_file` (none when not set).
    pub fn trusted(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        match &self.ca_file {
            None => Ok(Vec::new()),
            Some(path) => {
                common::http::ca_certificates("kingdee.ca_file", path).map_err(ConfigError)
            }
        }
    }

    /// What a client that calls needs: the site and the credentials of `auth`.
    pub fn check_credentials(&self) -> Result<(), ConfigError> {
        require_url(&self.base_url, "kingdee.base_url")?;
        let mut required = vec![
            (&self.acct_id, "kingdee.acct_id"),
            (&self.user_name, "kingdee.user_name"),
        ];
        match self.auth {
            KingdeeAuth::Password => required.push((&self.password, "kingdee.password")),
            KingdeeAuth::Signature | KingdeeAuth::LoginBySign => {
                required.push((&self.app_id, "kingdee.app_id"));
                required.push((&self.app_secret, "kingdee.app_secret"));
            }
        }
        for (value, key) in required {
            if value.is_empty() {
                return Err(ConfigError::key(
                    key,
                    "is required by the loader with this kingdee.auth",
                ));
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

    fn kingdee(pairs: &[(&str, &str)]) -> Result<KingdeeConfig, ConfigError> {
        env(pairs).and_then(|l| l.section())
    }

    #[test]
    fn the_type_has_the_registered_keys() {
        shape::registered::<KingdeeConfig>("kingdee").expect("matches");
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_a_configuration_error() {
        let file = common::config::testing::TempFile::new("not a certificate\n");
        let path = file.0.to_str().expect("utf-8");
        let e = kingdee(&[("JST2KD_KINGDEE__CA_FILE", path)]).expect_err("refused");
        assert!(e.to_string().contains("kingdee.ca_file"), "{e}");
    }

    #[test]
    fn credentials_follow_the_auth() {
        let e = kingdee(&[])
            .and_then(|c| c.check_credentials())
            .expect_err("no url");
        assert!(e.to_string().contains("kingdee.base_url"), "{e}");
        let base = [
            ("JST2KD_KINGDEE__BASE_URL", "http://k/k3cloud"),
            ("JST2KD_KINGDEE__ACCT_ID", "a"),
            ("JST2KD_KINGDEE__USER_NAME", "u"),
        ];
        let e = kingdee(&base)
            .and_then(|c| c.check_credentials())
            .expect_err("signature needs the app");
        assert!(e.to_string().contains("kingdee.app_id"), "{e}");
        let mut password = base.to_vec();
        password.extend([("JST2KD_KINGDEE__AUTH", "password")]);
        let e = kingdee(&password)
            .and_then(|c| c.check_credentials())
            .expect_err("password needs the password");
        assert!(e.to_string().contains("kingdee.password"), "{e}");
        password.push(("JST2KD_KINGDEE__PASSWORD", "p"));
        kingdee(&password)
            .and_then(|c| c.check_credentials())
            .expect("complete");
        let e = kingdee(&[("JST2KD_KINGDEE__APP_ID", "nounderscore")]).expect_err("app id");
        assert!(e.to_string().contains("kingdee.app_id"), "{e}");
        let e = kingdee(&[("JST2KD_KINGDEE__AUTH", "oauth")]).expect_err("auth");
        assert!(e.to_string().contains("kingdee.auth"), "{e}");
    }

    #[test]
    fn every_secret_comes_from_its_file() {
        type Read = fn(&KingdeeConfig) -> Secret;
        let keys: [(&str, Read); 5] = [
            ("ACCT_ID", |c| c.acct_id.clone()),
            ("USER_NAME", |c| c.user_name.clone()),
            ("APP_ID", |c| c.app_id.clone()),
            ("APP_SECRET", |c| c.app_secret.clone()),
            ("PASSWORD", |c| c.password.clone()),
        ];
        for (key, read) in keys {
            let value = format!("{key}_from_file");
            let file = TempFile::new(&format!("{value}\n"));
            let var = format!("JST2KD_KINGDEE__{key}_FILE");
            let c = kingdee(&[(&var, file.0.to_str().expect("utf-8"))]).expect(key);
            assert_eq!(read(&c).expose(), value);
            assert!(!format!("{c:?}").contains("from_file"), "{key} printed");
            let e = kingdee(&[(&var, "/no/such/file")]).expect_err("missing");
            assert!(
                e.to_string()
                    .contains(&format!("kingdee.{}_file", key.to_lowercase())),
                "{e}"
            );
        }
    }
}
