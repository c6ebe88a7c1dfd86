//! Configuration: built-in defaults < TOML file < `JST2KD_<SECTION>__<KEY>` environment.
//!
//! One file serves every binary; each binary then checks the sections it uses with
//! [`Config::validate`]. Unknown sections and keys are refused everywhere, secrets are
//! [`Secret`]s (never printed) and may come from files (`*_file` keys), and an error names the
//! key at fault in one line without repeating its value.
//!
//! Invariant: a value given as text in the environment stays text (`JST2KD_MAPPING__ORG=0100`
//! is the string `"0100"`); numeric keys parse their own text (see [`lenient`]).

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use crate::telemetry::Stage;

mod env;
mod sections;
mod values;

use env::env_dict;
pub use sections::*;
pub use values::*;

/// Prefix of the environment variables this configuration reads.
pub const ENV_PREFIX: &str = "JST2KD_";

/// A configuration problem, reported in one line that names the key (never its value).
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn key(key: &str, problem: impl fmt::Display) -> Self {
        Self(format!("`{key}` {problem}"))
    }
}
impl Config {
    /// Loads defaults < `file` (when given) < the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads defaults < `file` < the given environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::extract(figment, env)
    }

    /// Loads defaults < TOML `text` < the given environment (the demo's built-in file).
    pub fn load_from_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::extract(Figment::new().merge(Toml::string(text)), env)
    }

    fn extract(
        figment: Figment,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let figment = figment.merge(Serialized::defaults(env_dict(env)));
        let mut config: Config = figment.extract().map_err(|e| describe(&e))?;
        config.resolve_secrets()?;
        config.check_common()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        resolve(&mut self.amqp.url, &mut self.amqp.url_file, "amqp.url")?;
        let j = &mut self.jst;
        resolve(&mut j.app_key, &mut j.app_key_file, "jst.app_key")?;
        resolve(&mut j.app_secret, &mut j.app_secret_file, "jst.app_secret")?;
        resolve(
            &mut j.access_token,
            &mut j.access_token_file,
            "jst.access_token",
        )?;
        resolve(
            &mut j.refresh_token,
            &mut j.refresh_token_file,
            "jst.refresh_token",
        )?;
        let k = &mut self.kingdee;
        resolve(&mut k.acct_id, &mut k.acct_id_file, "kingdee.acct_id")?;
        resolve(&mut k.user_name, &mut k.user_name_file, "kingdee.user_name")?;
        resolve(&mut k.app_id, &mut k.app_id_file, "kingdee.app_id")?;
        resolve(
            &mut k.app_secret,
            &mut k.app_secret_file,
            "kingdee.app_secret",
        )?;
        resolve(&mut k.password, &mut k.password_file, "kingdee.password")?;
        Ok(())
    }

    /// Checks that hold for every binary.
    fn check_common(&self) -> Result<(), ConfigError> {
        let url = self.amqp.url.expose();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError::key(
                "amqp.url",
                "must start with amqp:// or amqps://",
            ));
        }
        if !crate::queue::rabbit::is_valid_url(url) {
            // Caught here, it is a configuration error (exit 2), not an endless "cannot reach".
            return Err(ConfigError::key(
                "amqp.url",
                "is not a valid AMQP URL (amqp://user:password@host:port/vhost?heartbeat=10)",
            ));
        }
        let prefix = &self.amqp.prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::key(
                "amqp.prefix",
                "must be non-empty letters, digits, '-', '_' or '.'",
            ));
        }
        if self.amqp.prefetch == 0 {
            return Err(ConfigError::key("amqp.prefetch", "must be at least 1"));
        }
        if !(64 * 1024..=128 * 1024 * 1024).contains(&self.amqp.max_message_bytes) {
            return Err(ConfigError::key(
                "amqp.max_message_bytes",
                "must be 65536 (64 KiB) to 134217728 (128 MiB, the broker's own limit)",
            ));
        }
        if self.amqp.delivery_limit == 0 {
            // 0 would dead-letter every message the first time it is requeued.
            return Err(ConfigError::key(
                "amqp.delivery_limit",
                "must be at least 1",
            ));
        }
        if self.amqp.retry_delays.is_empty() {
            return Err(ConfigError::key(
                "amqp.retry_delays",
                "must hold at least one delay (a transient failure needs a tier to wait in)",
            ));
        }
        if self.runtime.shutdown_timeout.0.is_zero() {
            return Err(ConfigError::key(
                "runtime.shutdown_timeout",
                "must be more than 0 (in-flight work needs time to finish)",
            ));
        }
        if self.amqp.retry_delays.iter().any(|d| d.0.as_secs() == 0) {
            return Err(ConfigError::key(
                "amqp.retry_delays",
                "must hold delays of at least 1s",
            ));
        }
        Ok(())
    }

    /// Checks the sections `stage` uses: each binary checks only what it reads.
    pub fn validate(&self, stage: Stage) -> Result<(), ConfigError> {
        match stage {
            Stage::Producer => self.validate_producer(),
            Stage::Transformer => self.validate_mapping(),
            Stage::Loader => self.validate_kingdee(),
        }
    }

    fn validate_producer(&self) -> Result<(), ConfigError> {
        let j = &self.jst;
        require_url(&j.base_url, "jst.base_url")?;
        // The access token may be left out: the producer then asks for one (getInitToken).
        for (value, key) in [
            (&j.app_key, "jst.app_key"),
            (&j.app_secret, "jst.app_secret"),
        ] {
            if value.is_empty() {
                return Err(ConfigError::key(key, "is required by the producer"));
            }
        }
        if !(1..=50).contains(&j.page_size) {
            return Err(ConfigError::key("jst.page_size", "must be 1 to 50"));
        }
        if self.producer.statuses.is_empty() {
            return Err(ConfigError::key(
                "producer.statuses",
                "must name at least one status",
            ));
        }
        if self.producer.poll_interval.0.is_zero() {
            return Err(ConfigError::key(
                "producer.poll_interval",
                "must be more than 0",
            ));
        }
        Ok(())
    }

    fn validate_mapping(&self) -> Result<(), ConfigError> {
        let m = &self.mapping;
        if m.org.trim().is_empty() {
            return Err(ConfigError::key(
                "mapping.org",
                "is required: the Kingdee organisation number",
            ));
        }
        if m.warehouses.is_empty() {
            return Err(ConfigError::key(
                "mapping.warehouses",
                "is required: map each JST warehouse to a Kingdee stock number",
            ));
        }
        for (template, key) in [
            (&m.bill_no_template, "mapping.bill_no_template"),
            (&m.gain_bill_no_template, "mapping.gain_bill_no_template"),
        ] {
            if !template.contains("{io_id}") {
                return Err(ConfigError::key(key, "must contain {io_id}"));
            }
        }
        if m.gains == Gains::MiscIn
            && m.bill_no_template.replace("{io_id}", "")
                == m.gain_bill_no_template.replace("{io_id}", "")
        {
            return Err(ConfigError::key(
                "mapping.gain_bill_no_template",
                "must differ from mapping.bill_no_template (two bills of one document need two numbers)",
            ));
        }
        if !(1..=10_000).contains(&m.max_entries) {
            return Err(ConfigError::key(
                "mapping.max_entries",
                "must be 1 to 10000",
            ));
        }
        if m.statuses.is_empty() {
            return Err(ConfigError::key(
                "mapping.statuses",
                "must name at least one status",
            ));
        }
        Ok(())
    }

    fn validate_kingdee(&self) -> Result<(), ConfigError> {
        let k = &self.kingdee;
        require_url(&k.base_url, "kingdee.base_url")?;
        let mut required = vec![
            (&k.acct_id, "kingdee.acct_id"),
            (&k.user_name, "kingdee.user_name"),
        ];
        match k.auth {
            KingdeeAuth::Password => required.push((&k.password, "kingdee.password")),
            KingdeeAuth::Signature | KingdeeAuth::LoginBySign => {
                required.push((&k.app_id, "kingdee.app_id"));
                required.push((&k.app_secret, "kingdee.app_secret"));
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
        if k.auth != KingdeeAuth::Password && !k.app_id.expose().contains('_') {
            return Err(ConfigError::key(
                "kingdee.app_id",
                "must look like 123456_xxxxxxxx (the id Kingdee issued)",
            ));
        }
        if self.loader.batch_size == 0 || self.loader.batch_size > 1000 {
            return Err(ConfigError::key("loader.batch_size", "must be 1 to 1000"));
        }
        if self.loader.concurrency == 0 {
            return Err(ConfigError::key("loader.concurrency", "must be at least 1"));
        }
        Ok(())
    }
}

fn require_url(value: &str, key: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::key(key, "is required"));
    }
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(ConfigError::key(key, "must start with http:// or https://"));
    }
    Ok(())
}

/// Takes a secret from its `*_file` key when that is given; both at once is an error.
fn resolve(value: &mut Secret, file: &mut Option<PathBuf>, key: &str) -> Result<(), ConfigError> {
    let Some(path) = file.take() else {
        return Ok(());
    };
    if !value.is_empty() && Some(value.expose()) != default_secret(key) {
        return Err(ConfigError(format!(
            "set either `{key}` or `{key}_file`, not both"
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError(format!(
            "`{key}_file`: cannot read {}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    *value = Secret::new(text.trim_end_matches(['\r', '\n']));
    Ok(())
}

/// The built-in default of a secret key, which a `*_file` may replace without conflict.
fn default_secret(key: &str) -> Option<&'static str> {
    (key == "amqp.url").then_some("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10")
}

/// Turns figment's error into one line that names the key and never shows the value.
fn describe(err: &figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut key = err.path.join(".");
    let problem = match &err.kind {
        // A parse error of the file: its first line names line and column; the lines after it
        // quote the file, which may hold a secret.
        Kind::Message(m) if key.is_empty() => {
            m.lines().next().unwrap_or("cannot be read").to_string()
        }
        Kind::Message(m) => m.clone(),
        Kind::InvalidType(_, expected) => format!("has the wrong type: expected {expected}"),
        Kind::InvalidValue(_, expected) => format!("has an invalid value: expected {expected}"),
        Kind::InvalidLength(_, expected) => format!("has the wrong length: expected {expected}"),
        Kind::UnknownVariant(_, expected) => {
            format!("must be one of: {}", expected.join(", "))
        }
        Kind::UnknownField(field, _) => {
            if key.is_empty() {
                key = field.clone();
            }
            "is not a known configuration key".to_string()
        }
        Kind::MissingField(field) => format!("misses `{field}`"),
        Kind::DuplicateField(field) => format!("sets `{field}` twice"),
        other => format!("cannot be read ({})", kind_name(other)),
    };
    if key.is_empty() {
        ConfigError(problem)
    } else {
        ConfigError::key(&key, problem)
    }
}

fn kind_name(kind: &figment::error::Kind) -> &'static str {
    use figment::error::Kind;
    match kind {
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range",
        Kind::Unsupported(_) | Kind::UnsupportedKey(..) => "unsupported value",
        _ => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn toml(text: &str) -> tempfile_like::TempToml {
        tempfile_like::TempToml::new(text)
    }

    /// A tiny self-deleting TOML file, so config tests exercise the real file provider.
    mod tempfile_like {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        pub struct TempToml(pub PathBuf);
        impl TempToml {
            pub fn new(text: &str) -> Self {
                let n = N.fetch_add(1, Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!(
                    "jst2kd-config-test-{}-{n}.toml",
                    std::process::id()
                ));
                std::fs::write(&path, text).ok();
                Self(path)
            }
        }
        impl Drop for TempToml {
            fn drop(&mut self) {
                std::fs::remove_file(&self.0).ok();
            }
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(c.amqp.prefix, "jst2kd");
        assert_eq!(c.amqp.prefetch, 100);
        assert_eq!(c.amqp.delivery_limit, 20);
        let delays: Vec<u64> = c.amqp.retry_delays.iter().map(|d| d.0.as_secs()).collect();
        assert_eq!(delays, vec![5, 30, 120, 600]);
        assert_eq!(c.loader.batch_size, 50);
        assert_eq!(c.loader.linger, Dur::millis(200));
        assert_eq!(c.mapping.bill_no_template, "JSTPD{io_id}");
        assert_eq!(c.producer.statuses, vec!["Confirmed", "Archive"]);
        assert_eq!(c.runtime.shutdown_timeout, Dur::secs(30));
    }

    #[test]
    fn env_overrides_file_and_keeps_text_as_text() {
        let f = toml("[mapping]\norg = \"1\"\n[amqp]\nprefetch = 7\n");
        let c = Config::load_from(
            Some(&f.0),
            env(&[
                ("JST2KD_MAPPING__ORG", "0100"),
                ("JST2KD_MAPPING__WAREHOUSES__1", "0020002"),
                ("JST2KD_MAPPING__SKUS__Abc-RED", "MAT-1"),
                ("JST2KD_AMQP__PREFETCH", "12"),
                ("JST2KD_AMQP__RETRY_DELAYS", "1s, 2m"),
                ("JST2KD_PRODUCER_SERVICE_HOST", "10.0.0.1"),
                ("JST2KD_CONFIG", "/nowhere.toml"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.mapping.org, "0100");
        assert_eq!(
            c.mapping.warehouses.get("1").map(String::as_str),
            Some("0020002")
        );
        assert_eq!(c.amqp.prefetch, 12);
        assert_eq!(
            c.mapping.skus.get("Abc-RED").map(String::as_str),
            Some("MAT-1")
        );
        assert_eq!(c.amqp.retry_delays, vec![Dur::secs(1), Dur::secs(120)]);
    }

    #[test]
    fn unknown_keys_and_sections_are_refused_by_name() {
        let f = toml("[amqp]\nprefixx = \"a\"\n");
        let e = Config::load_from(Some(&f.0), env(&[])).expect_err("refused");
        assert!(e.to_string().contains("`amqp.prefixx`"), "{e}");
        let e = Config::load_from(None, env(&[("JST2KD_NOPE__X", "1")])).expect_err("refused");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn a_bad_value_is_named_without_repeating_it() {
        let e = Config::load_from(None, env(&[("JST2KD_AMQP__PREFETCH", "lots-of-secret")]))
            .expect_err("refused");
        let line = e.to_string();
        assert!(line.contains("amqp.prefetch"), "{line}");
        assert!(!line.contains("lots-of-secret"), "{line}");
        assert!(!line.contains('\n'));
        let e = Config::load_from(None, env(&[("JST2KD_LOADER__LINGER", "5 parsecs")]))
            .expect_err("refused");
        assert!(e.to_string().contains("loader.linger"), "{e}");
    }

    #[test]
    fn a_toml_syntax_error_does_not_quote_the_file() {
        let f = toml("[amqp]\nurl = \"amqp://u:hunter2\\q@h\"\n");
        let e = Config::load_from(Some(&f.0), env(&[])).expect_err("bad escape");
        let line = e.to_string();
        assert!(!line.contains("hunter2"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn an_unparseable_amqp_url_is_refused_without_repeating_it() {
        let e = Config::load_from(
            None,
            env(&[("JST2KD_AMQP__URL", "amqp://u:hunter2@host:notaport/%2f")]),
        )
        .expect_err("refused");
        assert!(e.to_string().contains("amqp.url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Config::load_from(
            None,
            env(&[
                ("JST2KD_JST__APP_SECRET", "s3cr3t-value"),
                ("JST2KD_AMQP__URL", "amqp://u:hunter2@h:5672/%2f"),
            ]),
        )
        .expect("loads");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t-value"));
        assert!(!debug.contains("hunter2"));
    }

    #[test]
    fn secrets_come_from_files_but_not_from_both() {
        let secret = toml("from-a-file\n");
        let path = secret.0.display().to_string();
        let c =
            Config::load_from(None, env(&[("JST2KD_JST__APP_SECRET_FILE", &path)])).expect("loads");
        assert_eq!(c.jst.app_secret.expose(), "from-a-file");
        let e = Config::load_from(
            None,
            env(&[
                ("JST2KD_JST__APP_SECRET_FILE", &path),
                ("JST2KD_JST__APP_SECRET", "x"),
            ]),
        )
        .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
        let e = Config::load_from(None, env(&[("JST2KD_JST__APP_SECRET_FILE", "/no/such")]))
            .expect_err("missing file");
        assert!(e.to_string().contains("jst.app_secret_file"), "{e}");
    }

    /// Reads back the secret a `*_file` key fills.
    type SecretOf = fn(&Config) -> &Secret;

    /// Every `*_file` key, and how to read back the secret it fills.
    fn secret_keys() -> Vec<(&'static str, SecretOf)> {
        vec![
            ("amqp.url", |c| &c.amqp.url),
            ("jst.app_key", |c| &c.jst.app_key),
            ("jst.app_secret", |c| &c.jst.app_secret),
            ("jst.access_token", |c| &c.jst.access_token),
            ("jst.refresh_token", |c| &c.jst.refresh_token),
            ("kingdee.acct_id", |c| &c.kingdee.acct_id),
            ("kingdee.user_name", |c| &c.kingdee.user_name),
            ("kingdee.app_id", |c| &c.kingdee.app_id),
            ("kingdee.app_secret", |c| &c.kingdee.app_secret),
            ("kingdee.password", |c| &c.kingdee.password),
        ]
    }

    #[test]
    fn every_secret_file_key_is_read_and_a_missing_file_is_named() {
        let keys = secret_keys();
        // The list above covers every `*_file` field this module declares.
        let declared = include_str!("sections.rs")
            .matches(concat!("_file: Option<", "PathBuf>"))
            .count();
        assert_eq!(
            declared,
            keys.len(),
            "a *_file key is missing from the test"
        );
        let dir = std::env::temp_dir().join(format!("jst2kd-secret-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (key, read) in keys {
            let (section, name) = key.split_once('.').expect("dotted");
            let var = format!(
                "JST2KD_{}__{}_FILE",
                section.to_uppercase(),
                name.to_uppercase()
            );
            let value = if key == "amqp.url" {
                "amqp://u:from-file@127.0.0.1:5672/%2f".to_string()
            } else {
                format!("{key}-from-file")
            };
            let path = dir.join(key);
            std::fs::write(&path, format!("{value}\n")).expect("write");
            let config = Config::load_from(None, env(&[(&var, path.to_str().expect("utf-8"))]))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(read(&config).expose(), value, "{key}_file is not read");
            let missing = dir.join("nonexistent");
            let e = Config::load_from(None, env(&[(&var, missing.to_str().expect("utf-8"))]))
                .expect_err("a missing file is refused");
            assert!(e.to_string().contains(&format!("{key}_file")), "{key}: {e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn durations_that_would_overflow_and_values_that_break_a_worker_are_refused() {
        for (var, value, key) in [
            (
                "JST2KD_RUNTIME__SHUTDOWN_TIMEOUT",
                "99999999999999999999d",
                "runtime.shutdown_timeout",
            ),
            (
                "JST2KD_RUNTIME__SHUTDOWN_TIMEOUT",
                "0s",
                "runtime.shutdown_timeout",
            ),
            (
                "JST2KD_LOADER__LINGER",
                "99999999999999999999d",
                "loader.linger",
            ),
            (
                "JST2KD_LOADER__LINGER",
                "18446744073709551615",
                "loader.linger",
            ),
            (
                "JST2KD_PRODUCER__POLL_INTERVAL",
                "1e30s",
                "producer.poll_interval",
            ),
            ("JST2KD_AMQP__DELIVERY_LIMIT", "0", "amqp.delivery_limit"),
            ("JST2KD_AMQP__RETRY_DELAYS", "[]", "amqp.retry_delays"),
        ] {
            let e = Config::load_from(None, env(&[(var, value)]))
                .expect_err(&format!("{var}={value} is refused"));
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
        }
        let e =
            Config::load_from_str("[amqp]\nretry_delays = []\n", env(&[])).expect_err("no tier");
        assert!(e.to_string().contains("amqp.retry_delays"), "{e}");
        assert!(parse_duration("3650d").is_ok());
        assert!(parse_duration("3651d").is_err());
    }

    #[test]
    fn roles_check_their_sections() {
        let c = Config::load_from(None, env(&[])).expect("loads");
        let e = c.validate(Stage::Transformer).expect_err("no org");
        assert!(e.to_string().contains("mapping.org"));
        let e = c.validate(Stage::Loader).expect_err("no url");
        assert!(e.to_string().contains("kingdee.base_url"));
        let e = c.validate(Stage::Producer).expect_err("no key");
        assert!(e.to_string().contains("jst.app_key"));
        let c = Config::load_from(
            None,
            env(&[
                ("JST2KD_JST__APP_KEY", "k"),
                ("JST2KD_JST__APP_SECRET", "s"),
            ]),
        )
        .expect("loads");
        c.validate(Stage::Producer)
            .expect("no access token needed: getInitToken");
        let e = Config::load_from(
            None,
            env(&[
                ("JST2KD_JST__APP_KEY", "k"),
                ("JST2KD_JST__APP_SECRET", "s"),
                ("JST2KD_JST__PAGE_SIZE", "51"),
            ]),
        )
        .expect("loads")
        .validate(Stage::Producer)
        .expect_err("page size");
        assert!(e.to_string().contains("jst.page_size"), "{e}");
    }

    #[test]
    fn start_at_takes_a_time_or_a_duration() {
        let c = Config::load_from(
            None,
            env(&[("JST2KD_PRODUCER__START_AT", "2026-01-02 03:04:05")]),
        )
        .expect("loads");
        assert!(matches!(c.producer.start_at, StartAt::At(_)));
        let c =
            Config::load_from(None, env(&[("JST2KD_PRODUCER__START_AT", "31d")])).expect("loads");
        assert_eq!(
            c.producer.start_at,
            StartAt::Ago(Duration::from_secs(31 * 86400))
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
