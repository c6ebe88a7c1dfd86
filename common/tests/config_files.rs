#![allow(clippy::expect_used)]
//! The shipped configuration files load and say what they should.

use std::path::Path;

use common::config::Config;
use common::telemetry::Stage;

fn file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(name)
}

#[test]
fn example_toml_documents_the_defaults() {
    let example =
        Config::load_from(Some(&file("example.toml")), Vec::new()).expect("example.toml loads");
    let defaults = Config::load_from(None, Vec::new()).expect("defaults");
    assert_eq!(
        format!("{example:?}"),
        format!("{defaults:?}"),
        "example.toml shows the defaults"
    );
    // Debug prints every secret as ***, so the comparison above cannot see them: compare them
    // one by one.
    assert_eq!(
        secrets(&example),
        secrets(&defaults),
        "example.toml's secrets"
    );
}

/// Every secret of a configuration, in the clear.
fn secrets(c: &Config) -> Vec<String> {
    [
        &c.amqp.url,
        &c.jst.app_key,
        &c.jst.app_secret,
        &c.jst.access_token,
        &c.jst.refresh_token,
        &c.kingdee.acct_id,
        &c.kingdee.user_name,
        &c.kingdee.app_id,
        &c.kingdee.app_secret,
        &c.kingdee.password,
    ]
    .iter()
    .map(|s| s.expose().to_string())
    .collect()
}

#[test]
fn local_toml_serves_every_worker() {
    let local = Config::load_from(Some(&file("local.toml")), Vec::new()).expect("local.toml loads");
    for role in [Stage::Producer, Stage::Transformer, Stage::Loader] {
        local.validate(role).expect("valid for every worker");
    }
}
