#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst2kd check` against both simulators and the real RabbitMQ.

use std::process::Command;

use e2e::{Scratch, Sims, binary, delete_queues};

#[tokio::test]
async fn check_reports_each_part_and_fails_on_a_wrong_secret() {
    let dir = Scratch::new("check");
    let sims = Sims::start(&dir.0, &[]).await;
    let (jst, kingdee) = (sims.jst.clone(), sims.kingdee.clone());
    let prefix = format!("jst2kdtest-check-{}", std::process::id());
    let run = |extra: &[(&str, &str)]| {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/local.toml");
        let mut cmd = Command::new(binary("jst2kd"));
        cmd.args(["check", "--config"]).arg(config);
        cmd.env("JST2KD_AMQP__PREFIX", &prefix)
            .env("JST2KD_JST__BASE_URL", &jst)
            .env("JST2KD_KINGDEE__BASE_URL", format!("{kingdee}/k3cloud"))
            .env(
                "JST2KD_PRODUCER__CHECKPOINT",
                dir.path("producer.checkpoint.json"),
            );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    for part in [
        "config for the loader: ok",
        "rabbitmq: ok",
        "jushuitan: ok",
        "kingdee: ok",
    ] {
        assert!(stdout.contains(part), "{part} in\n{stdout}");
    }
    let out = run(&[(
        "JST2KD_KINGDEE__APP_SECRET",
        "ffffffffffffffffffffffffffffffff",
    )]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("kingdee: FAIL"), "{stdout}");
    assert!(!stdout.contains("ffffffff"), "no secret in the output");
    // While a producer holds the lock, the account's quota is its own: check leaves it be.
    let topology = common::queue::Topology::from_config(&common::queue::AmqpConfig {
        prefix: prefix.clone(),
        ..common::queue::AmqpConfig::default()
    });
    let lock = common::queue::rabbit::ProducerLock::acquire(
        &common::config::Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "jst2kdtest-check-producer",
        &topology,
    )
    .await
    .expect("the lock");
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("jushuitan: skipped (a producer is running"),
        "{stdout}"
    );
    lock.release().await;
    delete_queues(&prefix);
}

#[tokio::test]
async fn check_never_panics_whatever_refuses_it() {
    let dir = Scratch::new("check-refused");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/local.toml");
    let closed = e2e::free_port();
    for (amqp, says) in [
        (
            format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"),
            "rabbitmq: FAIL",
        ),
        (
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f".to_string(),
            "ACCESS_REFUSED",
        ),
    ] {
        let out = Command::new(binary("jst2kd"))
            .args(["check", "--config"])
            .arg(&config)
            .env("JST2KD_AMQP__URL", &amqp)
            // Neither simulator runs: every service refuses.
            .env("JST2KD_JST__BASE_URL", format!("http://127.0.0.1:{closed}"))
            .env(
                "JST2KD_KINGDEE__BASE_URL",
                format!("http://127.0.0.1:{closed}/k3cloud"),
            )
            .env(
                "JST2KD_PRODUCER__CHECKPOINT",
                dir.path("producer.checkpoint.json"),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stdout.contains(says), "{says} in\n{stdout}");
        assert!(
            stdout.contains("jushuitan: FAIL") && stdout.contains("kingdee: FAIL"),
            "{stdout}"
        );
        assert!(!stderr.contains("panicked"), "the whole stderr:\n{stderr}");
        assert!(!stdout.contains("not-the-password") && !stderr.contains("not-the-password"));
    }
}
