//! `[producer]`, and everything the producer reads: `[amqp]`, `[jst]`, `[producer]`.

use std::path::PathBuf;
use std::time::Duration;

use common::config::{ConfigError, Dur, FromLayers, Layers, Section, lenient, parse_duration};
use common::queue::AmqpConfig;
use common::time::parse_beijing;
use jst::JstConfig;
use serde::Deserialize;

/// The producer's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The broker.
    pub amqp: AmqpConfig,
    /// Jushuitan.
    pub jst: JstConfig,
    /// The polling.
    pub producer: ProducerConfig,
}

impl FromLayers for Config {
    fn from_layers(layers: &Layers) -> Result<Self, ConfigError> {
        let config = Self {
            amqp: layers.section()?,
            jst: layers.section()?,
            producer: layers.section()?,
        };
        config.jst.check_credentials()?;
        Ok(config)
    }
}

/// When the first poll starts: a Beijing time, or a duration before the first start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// A fixed instant.
    At(chrono::DateTime<chrono::FixedOffset>),
    /// That long before the producer first starts.
    Ago(Duration),
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(at) = parse_beijing(&text) {
            return Ok(StartAt::At(at));
        }
        parse_duration(&text).map(StartAt::Ago).map_err(|_| {
            serde::de::Error::custom(
                "must be a time (yyyy-MM-dd HH:mm:ss, Beijing) or a duration such as \"24h\"",
            )
        })
    }
}

/// `[producer]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Time between two polls.
    pub poll_interval: Dur,
    /// Where the very first poll starts.
    pub start_at: StartAt,
    /// How far before the checkpoint each poll starts again (documents modified while paging).
    pub overlap: Dur,
    /// How far behind "now" each poll ends (JST's own indexing delay).
    pub lag: Dur,
    /// Statuses fetched, one query each.
    #[serde(deserialize_with = "lenient::list")]
    pub statuses: Vec<String>,
    /// Checkpoint file.
    pub checkpoint: PathBuf,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Dur::secs(60),
            start_at: StartAt::Ago(Duration::from_secs(86400)),
            overlap: Dur::secs(300),
            lag: Dur::secs(30),
            statuses: vec!["Confirmed".into(), "Archive".into()],
            checkpoint: PathBuf::from("./producer.checkpoint.json"),
        }
    }
}

impl Section for ProducerConfig {
    const NAME: &'static str = "producer";

    fn check(&self) -> Result<(), ConfigError> {
        if self.statuses.is_empty() {
            return Err(ConfigError::key(
                "producer.statuses",
                "must name at least one status",
            ));
        }
        if self.poll_interval.0.is_zero() {
            return Err(ConfigError::key(
                "producer.poll_interval",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::shape;
    use common::config::testing::env;

    fn producer(pairs: &[(&str, &str)]) -> Result<ProducerConfig, ConfigError> {
        env(pairs).and_then(|l| l.section())
    }

    #[test]
    fn the_type_has_the_registered_keys() {
        shape::registered::<ProducerConfig>("producer").expect("matches");
    }

    #[test]
    fn defaults_match_the_spec() {
        let p = producer(&[]).expect("defaults");
        assert_eq!(p.statuses, vec!["Confirmed", "Archive"]);
        assert_eq!(p.poll_interval, Dur::secs(60));
        assert_eq!(p.start_at, StartAt::Ago(Duration::from_secs(86400)));
    }

    #[test]
    fn start_at_takes_a_time_or_a_duration() {
        let p = producer(&[("JST2KD_PRODUCER__START_AT", "2026-01-02 03:04:05")]).expect("loads");
        assert!(matches!(p.start_at, StartAt::At(_)));
        let p = producer(&[("JST2KD_PRODUCER__START_AT", "31d")]).expect("loads");
        assert_eq!(p.start_at, StartAt::Ago(Duration::from_secs(31 * 86400)));
    }

    #[test]
    fn the_producer_needs_its_credentials_and_a_sane_poll() {
        let e = env(&[])
            .and_then(|l| Config::from_layers(&l))
            .expect_err("no key");
        assert!(e.to_string().contains("jst.app_key"), "{e}");
        env(&[
            ("JST2KD_JST__APP_KEY", "k"),
            ("JST2KD_JST__APP_SECRET", "s"),
        ])
        .and_then(|l| Config::from_layers(&l))
        .expect("no access token needed: getInitToken");
        for (var, value, key) in [
            (
                "JST2KD_PRODUCER__POLL_INTERVAL",
                "1e30s",
                "producer.poll_interval",
            ),
            (
                "JST2KD_PRODUCER__POLL_INTERVAL",
                "0s",
                "producer.poll_interval",
            ),
            ("JST2KD_PRODUCER__STATUSES", "", "producer.statuses"),
            ("JST2KD_PRODUCER__START_AT", "soon", "producer.start_at"),
        ] {
            let e = producer(&[(var, value)]).expect_err(&format!("{var}={value}"));
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
        }
    }
}
