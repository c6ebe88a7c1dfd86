//! The shape of the one configuration file: every section and key name (SPEC section 5), and
//! which keys are secrets (and so may be given as `*_file`).
//!
//! The names are the file format, shared by every binary: the producer refuses a misspelt
//! `[loader]` key although it never reads `[loader]`, since the same file serves the loader.
//! The meaning of each section (types, defaults, checks) lives with the code that reads it;
//! that crate's tests call [`registered`] so that its type and this list cannot drift apart.

use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

use super::ConfigError;

/// One section's names.
#[derive(Debug)]
pub struct Shape {
    /// `[name]`.
    pub name: &'static str,
    /// Its keys (each secret among them also as `{key}_file`).
    pub keys: &'static [&'static str],
    /// The keys that hold secrets.
    pub secrets: &'static [&'static str],
}

/// Every section of the file.
pub const FILE: &[Shape] = &[
    Shape {
        name: "amqp",
        keys: &[
            "url",
            "prefix",
            "prefetch",
            "delivery_limit",
            "retry_delays",
            "max_message_bytes",
            "events_max_age",
            "events_max_bytes",
            "ca_file",
            "cert_file",
            "key_file",
        ],
        secrets: &["url"],
    },
    Shape {
        name: "metrics",
        keys: &["listen"],
        secrets: &[],
    },
    Shape {
        name: "runtime",
        keys: &["shutdown_timeout", "log_format"],
        secrets: &[],
    },
    Shape {
        name: "jst",
        keys: &[
            "base_url",
            "app_key",
            "app_secret",
            "access_token",
            "refresh_token",
            "page_size",
            "rate_per_second",
            "rate_per_minute",
            "timeout",
            "app_kind",
            "refresh_before",
            "access_token_expires_at",
            "ca_file",
        ],
        secrets: &["app_key", "app_secret", "access_token", "refresh_token"],
    },
    Shape {
        name: "producer",
        keys: &[
            "poll_interval",
            "start_at",
            "overlap",
            "lag",
            "statuses",
            "checkpoint",
        ],
        secrets: &[],
    },
    Shape {
        name: "kingdee",
        keys: &[
            "base_url",
            "auth",
            "acct_id",
            "user_name",
            "app_id",
            "app_secret",
            "password",
            "lcid",
            "org_num",
            "timeout",
            "allow_negative_stock",
            "after_save",
            "ca_file",
        ],
        secrets: &["acct_id", "user_name", "app_id", "app_secret", "password"],
    },
    Shape {
        name: "mapping",
        keys: &[
            "statuses",
            "loss_sign",
            "bill_no_template",
            "bill_type",
            "gains",
            "gain_bill_no_template",
            "gain_bill_type",
            "org",
            "dept",
            "unit",
            "units",
            "location_field",
            "warehouses",
            "skus",
            "require_sku_mapping",
            "max_entries",
        ],
        secrets: &[],
    },
    Shape {
        name: "loader",
        keys: &["batch_size", "linger", "concurrency"],
        secrets: &[],
    },
];

/// The shape of section `name`.
pub fn of(name: &str) -> Option<&'static Shape> {
    FILE.iter().find(|s| s.name == name)
}

/// The secret keys of section `name`.
pub(super) fn secrets_of(name: &str) -> &'static [&'static str] {
    of(name).map_or(&[], |s| s.secrets)
}

/// Refuses a section or key the file format does not have, naming it.
pub(super) fn check_names(root: &Dict) -> Result<(), ConfigError> {
    for (section, value) in root {
        let Some(shape) = of(section) else {
            return Err(ConfigError::key(
                section,
                "is not a known configuration section",
            ));
        };
        let Value::Dict(_, keys) = value else {
            continue; // the section's reader names it: "must be a table of keys"
        };
        for key in keys.keys() {
            let known = shape.keys.contains(&key.as_str())
                || key
                    .strip_suffix("_file")
                    .is_some_and(|k| shape.secrets.contains(&k));
            if !known {
                return Err(ConfigError::key(
                    &format!("{section}.{key}"),
                    "is not a known configuration key",
                ));
            }
        }
    }
    Ok(())
}

/// Whether section type `T`'s fields are exactly the keys [`FILE`] lists for `name`: the
/// owner of each section calls this in a test. The error lists the differences.
pub fn registered<T: DeserializeOwned>(name: &str) -> Result<(), String> {
    let shape = of(name).ok_or_else(|| format!("section `{name}` is not in shape::FILE"))?;
    let fields = field_names::<T>()
        .ok_or_else(|| format!("the type of `{name}` is not a struct with named fields"))?;
    let missing: Vec<_> = fields.iter().filter(|f| !shape.keys.contains(f)).collect();
    let extra: Vec<_> = shape.keys.iter().filter(|k| !fields.contains(k)).collect();
    let bad_secret: Vec<_> = shape
        .secrets
        .iter()
        .filter(|s| !shape.keys.contains(s))
        .collect();
    if missing.is_empty() && extra.is_empty() && bad_secret.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "section `{name}`: fields not in shape::FILE {missing:?}; listed but not fields \
             {extra:?}; secrets that are not keys {bad_secret:?}"
        ))
    }
}

/// The field names a derived `Deserialize` struct asks for, read by a deserializer that
/// records them and stops.
fn field_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut seen = None;
    // The probe always stops with its error; only the recorded names matter.
    let _ = T::deserialize(Probe(&mut seen));
    seen
}

struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> serde::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Loader {
        batch_size: usize,
        linger: String,
        concurrency: usize,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Short {
        batch_size: usize,
        lingerr: String,
    }

    #[test]
    fn a_type_matches_its_registered_names_or_the_difference_is_named() {
        registered::<Loader>("loader").expect("matches");
        let e = registered::<Short>("loader").expect_err("differs");
        assert!(e.contains("lingerr") && e.contains("concurrency"), "{e}");
        assert!(registered::<Loader>("nope").is_err());
    }

    #[test]
    fn every_secret_is_a_key() {
        for shape in FILE {
            for secret in shape.secrets {
                assert!(shape.keys.contains(secret), "{}.{secret}", shape.name);
            }
        }
    }
}
