//! Configuration: built-in defaults < TOML file < `JST2KD_<SECTION>__<KEY>` environment.
//!
//! This module is the loading every part stands on; it knows no section's meaning. One file
//! serves every binary: [`Layers`] reads the file and the environment once and refuses any
//! section or key the file format does not have ([`shape`], the one list of names, SPEC
//! section 5). Each section is a type that lives beside the code that reads it (`[amqp]` in
//! `common::queue`, `[jst]` in the `jst` client, `[mapping]` in the transformer …) and
//! implements [`Section`]: its name, its defaults (`Default`), and its own checks. A stage
//! takes out the sections it uses ([`Layers::section`]) into its own config type
//! ([`FromLayers`]); the worker harness builds that type before anything starts.
//!
//! Secrets are [`Secret`]s (never printed). Every secret key `k` of the shape may instead be
//! given as `k_file`, a file holding the value (Kubernetes secrets): [`Layers::section`]
//! reads it, for every section alike, so section types carry only the secret itself.
//!
//! Invariants: an error names the key at fault in one line and never repeats its value; a
//! value given as text in the environment stays text (`JST2KD_MAPPING__ORG=0100` is the
//! string `"0100"`), numeric keys parse their own text (see [`lenient`]).

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

mod env;
pub mod shape;
mod values;

use env::env_dict;
pub use values::*;

/// Prefix of the environment variables this configuration reads.
pub const ENV_PREFIX: &str = "JST2KD_";

/// A configuration problem, reported in one line that names the key (never its value).
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// "`key` problem".
    pub fn key(key: &str, problem: impl fmt::Display) -> Self {
        Self(format!("`{key}` {problem}"))
    }
}

/// A section of the configuration file: `[NAME]`, with its defaults and its own checks.
pub trait Section: DeserializeOwned {
    /// The section's name in the file and in `JST2KD_<NAME>__…`.
    const NAME: &'static str;

    /// Secret keys whose built-in default a file may also name: `*_file` then replaces the
    /// value without counting as "both given" (`amqp.url`, which the shipped files spell out).
    const SECRET_DEFAULTS: &'static [(&'static str, &'static str)] = &[];

    /// Checks that hold whoever reads the section (values in range, well-formed URLs).
    /// What a particular stage requires on top (a credential it needs) its config type checks.
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// A stage's whole configuration, taken out of the layers section by section.
pub trait FromLayers: Sized {
    /// Takes out and checks the sections this stage reads.
    fn from_layers(layers: &Layers) -> Result<Self, ConfigError>;
}

/// The file and the environment, merged and checked against the file's [`shape`]; sections
/// are typed only when a part takes them out.
#[derive(Clone, Debug)]
pub struct Layers {
    root: Dict,
}

impl Layers {
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
        Self::merge(figment, env)
    }

    /// Loads defaults < TOML `text` < the given environment (the demo's built-in file).
    pub fn load_from_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::merge(Figment::new().merge(Toml::string(text)), env)
    }

    fn merge(
        figment: Figment,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let figment = figment.merge(Serialized::defaults(env_dict(env)));
        let root: Dict = figment.extract().map_err(|e| describe(None, &e))?;
        shape::check_names(&root)?;
        Ok(Self { root })
    }

    /// Takes out section `T`: its keys over its defaults, secrets read from their `*_file`
    /// keys, then `T`'s own checks.
    pub fn section<T: Section>(&self) -> Result<T, ConfigError> {
        let name = T::NAME;
        let mut dict = match self.root.get(name) {
            None => Dict::new(),
            Some(Value::Dict(_, dict)) => dict.clone(),
            Some(_) => return Err(ConfigError::key(name, "must be a table of keys")),
        };
        for secret in shape::secrets_of(name) {
            let default = T::SECRET_DEFAULTS
                .iter()
                .find(|(k, _)| k == secret)
                .map(|(_, v)| *v);
            read_secret_file(&mut dict, name, secret, default)?;
        }
        let section: T = Figment::from(Serialized::defaults(dict))
            .extract()
            .map_err(|e| describe(Some(name), &e))?;
        section.check()?;
        Ok(section)
    }
}

/// Takes secret `key` of section `section` from its `*_file` key when that is given; both at
/// once is an error, unless the value given is empty or the built-in `default`. An empty path
/// is no file: an environment variable (`JST2KD_AMQP__URL_FILE=""`) takes back the file's
/// `*_file`, so that the value can come from another variable (as in deploy/k8s-rabbitmq).
fn read_secret_file(
    dict: &mut Dict,
    section: &str,
    key: &str,
    default: Option<&str>,
) -> Result<(), ConfigError> {
    let file_key = format!("{key}_file");
    let Some(path) = dict.remove(&file_key) else {
        return Ok(());
    };
    let full = format!("{section}.{key}");
    let Some(path) = path.as_str() else {
        return Err(ConfigError::key(
            &format!("{full}_file"),
            "must be a file path",
        ));
    };
    if path.is_empty() {
        return Ok(());
    }
    if dict.get(key).is_some_and(|v| {
        v.as_str()
            .is_none_or(|s| !s.is_empty() && Some(s) != default)
    }) {
        return Err(ConfigError(format!(
            "set either `{full}` or `{full}_file`, not both"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("`{full}_file`: cannot read {path}: {}", e.kind())))?;
    dict.insert(
        key.to_string(),
        Value::from(text.trim_end_matches(['\r', '\n']).to_string()),
    );
    Ok(())
}

/// Checks that `value` is an `http://` or `https://` URL; `key` names it in the error.
pub fn require_url(value: &str, key: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::key(key, "is required"));
    }
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(ConfigError::key(key, "must start with http:// or https://"));
    }
    Ok(())
}

/// Turns figment's error into one line that names the key and never shows the value.
fn describe(section: Option<&str>, err: &figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = err.path.join(".");
    let problem = match &err.kind {
        // A parse error of the file: its first line names line and column; the lines after it
        // quote the file, which may hold a secret.
        Kind::Message(m) if path.is_empty() && section.is_none() => {
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
            if path.is_empty() {
                path.clone_from(field);
            } else if !path.ends_with(field.as_str()) {
                // An unknown key of a table inside a section (a warehouse's).
                path = format!("{path}.{field}");
            }
            "is not a known configuration key".to_string()
        }
        Kind::MissingField(field) => format!("misses `{field}`"),
        Kind::DuplicateField(field) => format!("sets `{field}` twice"),
        other => format!("cannot be read ({})", kind_name(other)),
    };
    let key = match (section, path.is_empty()) {
        (Some(section), true) => section.to_string(),
        (Some(section), false) => format!("{section}.{path}"),
        (None, _) => path,
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

/// A tiny self-deleting file, so configuration tests (here and in the crates that own a
/// section) exercise the real file provider.
#[doc(hidden)]
pub mod testing {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{ConfigError, Layers};

    static N: AtomicU32 = AtomicU32::new(0);

    /// A temporary file holding `text`, deleted on drop.
    pub struct TempFile(pub PathBuf);

    impl TempFile {
        /// Writes `text` to a fresh file.
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

    impl Drop for TempFile {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }

    /// Loads defaults < the given environment pairs.
    pub fn env(pairs: &[(&str, &str)]) -> Result<Layers, ConfigError> {
        Layers::load_from(
            None,
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TempFile, env};
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    /// A stand-in for `[amqp]` (whose real type lives in `common::queue`), with the names the
    /// shape registers for it.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Amqp {
        url: Secret,
        prefix: String,
        #[serde(deserialize_with = "lenient::number")]
        prefetch: u16,
        #[serde(deserialize_with = "lenient::number")]
        delivery_limit: u32,
        #[serde(deserialize_with = "lenient::list")]
        retry_delays: Vec<Dur>,
        #[serde(deserialize_with = "lenient::number")]
        max_message_bytes: u64,
    }
    impl Section for Amqp {
        const NAME: &'static str = "amqp";
        fn check(&self) -> Result<(), ConfigError> {
            if self.prefetch > 1000 {
                return Err(ConfigError::key("amqp.prefetch", "is too large"));
            }
            Ok(())
        }
    }

    /// A stand-in for `[mapping]`, with three of its keys.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Mapping {
        org: String,
        warehouses: BTreeMap<String, String>,
        skus: BTreeMap<String, String>,
    }
    impl Section for Mapping {
        const NAME: &'static str = "mapping";
    }

    #[test]
    fn env_overrides_file_and_keeps_text_as_text() {
        let f = TempFile::new("[mapping]\norg = \"1\"\n[amqp]\nprefetch = 7\n");
        let layers = Layers::load_from(
            Some(&f.0),
            [
                ("JST2KD_MAPPING__ORG", "0100"),
                ("JST2KD_MAPPING__WAREHOUSES__1", "0020002"),
                ("JST2KD_MAPPING__SKUS__Abc-RED", "MAT-1"),
                ("JST2KD_AMQP__PREFETCH", "12"),
                ("JST2KD_AMQP__RETRY_DELAYS", "1s, 2m"),
                ("JST2KD_PRODUCER_SERVICE_HOST", "10.0.0.1"),
                ("JST2KD_CONFIG", "/nowhere.toml"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect("loads");
        let m: Mapping = layers.section().expect("mapping");
        assert_eq!(m.org, "0100");
        assert_eq!(m.warehouses.get("1").map(String::as_str), Some("0020002"));
        assert_eq!(m.skus.get("Abc-RED").map(String::as_str), Some("MAT-1"));
        let a: Amqp = layers.section().expect("amqp");
        assert_eq!(a.prefetch, 12);
        assert_eq!(a.retry_delays, vec![Dur::secs(1), Dur::secs(120)]);
    }

    #[test]
    fn unknown_keys_and_sections_are_refused_by_name() {
        let f = TempFile::new("[amqp]\nprefixx = \"a\"\n");
        let e = Layers::load_from(Some(&f.0), Vec::new()).expect_err("refused");
        assert!(e.to_string().contains("`amqp.prefixx`"), "{e}");
        // A section no binary reads is checked all the same: one file serves every binary.
        let e = env(&[("JST2KD_LOADER__LINGERR", "1s")]).expect_err("refused");
        assert!(e.to_string().contains("`loader.lingerr`"), "{e}");
        let e = env(&[("JST2KD_NOPE__X", "1")]).expect_err("refused");
        assert!(e.to_string().contains("nope"), "{e}");
        let f = TempFile::new("amqp = 3\n");
        let e = Layers::load_from(Some(&f.0), Vec::new())
            .and_then(|l| l.section::<Amqp>())
            .expect_err("refused");
        assert!(e.to_string().contains("`amqp`"), "{e}");
    }

    #[test]
    fn a_bad_value_is_named_without_repeating_it() {
        let e = env(&[("JST2KD_AMQP__PREFETCH", "lots-of-secret")])
            .and_then(|l| l.section::<Amqp>())
            .expect_err("refused");
        let line = e.to_string();
        assert!(line.contains("`amqp.prefetch`"), "{line}");
        assert!(!line.contains("lots-of-secret"), "{line}");
        assert!(!line.contains('\n'));
        let e = env(&[("JST2KD_AMQP__PREFETCH", "1001")])
            .and_then(|l| l.section::<Amqp>())
            .expect_err("the section's own check runs");
        assert!(e.to_string().contains("amqp.prefetch"), "{e}");
    }

    #[test]
    fn a_toml_syntax_error_does_not_quote_the_file() {
        let f = TempFile::new("[amqp]\nurl = \"amqp://u:hunter2\\q@h\"\n");
        let e = Layers::load_from(Some(&f.0), Vec::new()).expect_err("bad escape");
        let line = e.to_string();
        assert!(!line.contains("hunter2"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn secrets_come_from_files_but_not_from_both() {
        let secret = TempFile::new("amqp://from-a-file\n");
        let path = secret.0.display().to_string();
        let a: Amqp = env(&[("JST2KD_AMQP__URL_FILE", &path)])
            .and_then(|l| l.section())
            .expect("loads");
        assert_eq!(a.url.expose(), "amqp://from-a-file");
        let e = env(&[("JST2KD_AMQP__URL_FILE", &path), ("JST2KD_AMQP__URL", "x")])
            .and_then(|l| l.section::<Amqp>())
            .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
        let e = env(&[("JST2KD_AMQP__URL_FILE", "/no/such")])
            .and_then(|l| l.section::<Amqp>())
            .expect_err("missing file");
        assert!(e.to_string().contains("amqp.url_file"), "{e}");
        // An empty path in the environment takes back the file's `*_file`.
        let layers = Layers::load_from_str(
            &format!("[amqp]\nurl_file = {path:?}\n"),
            [
                ("JST2KD_AMQP__URL_FILE".to_string(), String::new()),
                (
                    "JST2KD_AMQP__URL".to_string(),
                    "amqp://from-the-env".to_string(),
                ),
            ],
        )
        .expect("loads");
        let a: Amqp = layers.section().expect("the variable's URL");
        assert_eq!(a.url.expose(), "amqp://from-the-env");
        // Only secrets have a `*_file` form.
        let e = env(&[("JST2KD_AMQP__PREFIX_FILE", &path)]).expect_err("not a secret");
        assert!(e.to_string().contains("amqp.prefix_file"), "{e}");
    }

    #[test]
    fn durations_parse() {
        use std::time::Duration;
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("3650d").is_ok());
        assert!(parse_duration("3651d").is_err());
    }
}
