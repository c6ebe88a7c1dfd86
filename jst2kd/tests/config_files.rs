#![allow(clippy::expect_used)]
//! The shipped configuration files load and say what they should. (Here, because this crate
//! sees every section's type: each lives with the code that reads it.)

use std::path::Path;

use common::config::{ConfigError, FromLayers, Layers, Secret, shape};
use common::queue::AmqpConfig;
use common::worker::{MetricsConfig, RuntimeConfig};
use jst::JstConfig;
use kingdee::KingdeeConfig;
use loader::LoaderConfig;
use producer::ProducerConfig;
use transformer::MappingConfig;

fn file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

/// Every section of a configuration, printed (`Debug`, secrets as `***`), and its secrets in
/// the clear, which `Debug` cannot show.
fn every_section(layers: &Layers) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let amqp: AmqpConfig = layers.section()?;
    let jst: JstConfig = layers.section()?;
    let kingdee: KingdeeConfig = layers.section()?;
    let printed = vec![
        format!("{:?}", layers.section::<MappingConfig>()?),
        format!("{amqp:?}"),
        format!("{:?}", layers.section::<MetricsConfig>()?),
        format!("{:?}", layers.section::<RuntimeConfig>()?),
        format!("{jst:?}"),
        format!("{:?}", layers.section::<ProducerConfig>()?),
        format!("{kingdee:?}"),
        format!("{:?}", layers.section::<LoaderConfig>()?),
    ];
    assert_eq!(
        printed.len(),
        shape::FILE.len(),
        "a section is missing here"
    );
    let secrets: Vec<&Secret> = vec![
        &amqp.url,
        &jst.app_key,
        &jst.app_secret,
        &jst.access_token,
        &jst.refresh_token,
        &kingdee.acct_id,
        &kingdee.user_name,
        &kingdee.app_id,
        &kingdee.app_secret,
        &kingdee.password,
    ];
    let secret_count: usize = shape::FILE.iter().map(|s| s.secrets.len()).sum();
    assert_eq!(secrets.len(), secret_count, "a secret is missing here");
    Ok((
        printed,
        secrets.iter().map(|s| s.expose().to_string()).collect(),
    ))
}

#[test]
fn example_toml_documents_the_defaults() {
    // `[mapping]` has no default for `org` and `warehouses` (the transformer refuses to start
    // without them, and the example leaves them to the user): both sides get the same ones.
    let required = || {
        [
            ("JST2KD_MAPPING__ORG", "100"),
            ("JST2KD_MAPPING__WAREHOUSES__1", "CK001"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    };
    let example =
        Layers::load_from(Some(&file("example.toml")), required()).expect("example.toml loads");
    let defaults = Layers::load_from(None, required()).expect("defaults");
    let (example_printed, example_secrets) = every_section(&example).expect("example sections");
    let (default_printed, default_secrets) = every_section(&defaults).expect("default sections");
    assert_eq!(
        example_printed, default_printed,
        "example.toml shows the defaults"
    );
    assert_eq!(example_secrets, default_secrets, "example.toml's secrets");
}

#[test]
fn local_toml_serves_every_worker() {
    let local = Layers::load_from(Some(&file("local.toml")), Vec::new()).expect("local.toml loads");
    producer::Config::from_layers(&local).expect("valid for the producer");
    transformer::Config::from_layers(&local).expect("valid for the transformer");
    loader::Config::from_layers(&local).expect("valid for the loader");
}
