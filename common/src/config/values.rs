//! The value types of the configuration: [`Secret`] (never printed), [`Dur`] (durations as
//! text, bounded so no clock overflows), and the [`lenient`] deserialisers that take a value
//! typed (TOML) or as text (environment).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A secret value: credentials, tokens, URLs with passwords. `Debug` and `Display` print `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A duration written as text: `"200ms"`, `"30s"`, `"5m"`, `"2h"`, `"31d"` (or a number of seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
}

/// Parses `"200ms"`, `"30s"`, `"5m"`, `"2h"`, `"31d"`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "must be a duration such as \"30s\", \"5m\" or \"200ms\"".to_string())?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err("has an unknown duration unit (use ms, s, m, h or d)".to_string()),
    };
    let secs = number * factor;
    if !secs.is_finite() || secs < 0.0 {
        return Err("must be a positive duration".to_string());
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err("is too long (at most 3650d)".to_string());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "must be a positive duration".to_string())
}

/// The longest duration any key or flag takes: ten years. Longer ones are refused, since
/// adding them to a clock would overflow (a panic) and none means anything here.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s <= MAX_DURATION.as_secs() => Ok(Dur(Duration::from_secs(s))),
            Raw::Secs(_) => Err(serde::de::Error::custom("is too long (at most 3650d)")),
            Raw::Text(t) => parse_duration(&t)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Deserialisers that accept a value either typed (TOML) or as text (environment).
pub mod lenient {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::str::FromStr;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText<T> {
        Num(T),
        Text(String),
    }

    /// A number, or its decimal text.
    pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr + Deserialize<'de>,
    {
        match NumOrText::<T>::deserialize(d)? {
            NumOrText::Num(n) => Ok(n),
            NumOrText::Text(t) => t
                .trim()
                .parse()
                .map_err(|_| D::Error::custom("must be a number")),
        }
    }

    /// `true`/`false`, as a boolean or text.
    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match NumOrText::<bool>::deserialize(d)? {
            NumOrText::Num(b) => Ok(b),
            NumOrText::Text(t) => match t.trim() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(D::Error::custom("must be true or false")),
            },
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText<T> {
        List(Vec<T>),
        Text(String),
    }

    /// A list, or its items as comma-separated text (`"5s,30s"`).
    pub fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + FromText,
    {
        match ListOrText::<T>::deserialize(d)? {
            ListOrText::List(items) => Ok(items),
            ListOrText::Text(t) => t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| T::from_text(s).map_err(D::Error::custom))
                .collect(),
        }
    }

    /// Items a comma-separated list can hold.
    pub trait FromText: Sized {
        /// Parses one item.
        fn from_text(text: &str) -> Result<Self, String>;
    }
    impl FromText for String {
        fn from_text(text: &str) -> Result<Self, String> {
            Ok(text.to_string())
        }
    }
    impl FromText for super::Dur {
        fn from_text(text: &str) -> Result<Self, String> {
            super::parse_duration(text).map(super::Dur)
        }
    }
}
