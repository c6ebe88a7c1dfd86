//! `[loader]`, and everything the loader reads: `[amqp]`, `[kingdee]` and `[loader]`.

use common::config::{ConfigError, Dur, FromLayers, Layers, Section, lenient};
use common::queue::AmqpConfig;
use kingdee::KingdeeConfig;
use serde::Deserialize;

/// The loader's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The broker.
    pub amqp: AmqpConfig,
    /// Kingdee.
    pub kingdee: KingdeeConfig,
    /// The batching.
    pub loader: LoaderConfig,
}

impl FromLayers for Config {
    fn from_layers(layers: &Layers) -> Result<Self, ConfigError> {
        let config = Self {
            amqp: layers.section()?,
            kingdee: layers.section()?,
            loader: layers.section()?,
        };
        config.kingdee.check_credentials()?;
        Ok(config)
    }
}

/// `[loader]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Bills per BatchSave call.
    #[serde(deserialize_with = "lenient::number")]
    pub batch_size: usize,
    /// How long an incomplete batch waits for more bills.
    pub linger: Dur,
    /// BatchSave calls in flight at once.
    #[serde(deserialize_with = "lenient::number")]
    pub concurrency: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 50,
            linger: Dur::millis(200),
            concurrency: 2,
        }
    }
}

impl Section for LoaderConfig {
    const NAME: &'static str = "loader";

    fn check(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 || self.batch_size > 1000 {
            return Err(ConfigError::key("loader.batch_size", "must be 1 to 1000"));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::key("loader.concurrency", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::shape;
    use common::config::testing::env;

    fn loader(pairs: &[(&str, &str)]) -> Result<LoaderConfig, ConfigError> {
        env(pairs).and_then(|l| l.section())
    }

    #[test]
    fn the_type_has_the_registered_keys() {
        shape::registered::<LoaderConfig>("loader").expect("matches");
    }

    #[test]
    fn defaults_match_the_spec_and_bad_values_are_named() {
        let l = loader(&[]).expect("defaults");
        assert_eq!(l.batch_size, 50);
        assert_eq!(l.linger, Dur::millis(200));
        assert_eq!(l.concurrency, 2);
        for (var, value, key) in [
            ("JST2KD_LOADER__LINGER", "5 parsecs", "loader.linger"),
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
            ("JST2KD_LOADER__BATCH_SIZE", "0", "loader.batch_size"),
            ("JST2KD_LOADER__BATCH_SIZE", "1001", "loader.batch_size"),
            ("JST2KD_LOADER__CONCURRENCY", "0", "loader.concurrency"),
        ] {
            let e = loader(&[(var, value)]).expect_err(&format!("{var}={value}"));
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
            if value.len() > 4 {
                assert!(
                    !e.to_string().contains(value),
                    "{var}={value} repeated: {e}"
                );
            }
        }
    }

    #[test]
    fn the_loader_needs_its_kingdee_credentials() {
        let e = env(&[])
            .and_then(|l| Config::from_layers(&l))
            .expect_err("no url");
        assert!(e.to_string().contains("kingdee.base_url"), "{e}");
    }
}
