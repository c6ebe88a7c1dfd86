#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst2kd check` against both simulators and the real RabbitMQ.

use std::process::Command;
use std::time::Duration;

use e2e::{Proc, Scratch, binary, delete_queues, free_port, http, wait_ok};

#[tokio::test]
async fn check_reports_each_part_and_fails_on_a_wrong_secret() {
    let dir = Scratch::new("check");
    let (jp, kp) = (free_port(), free_port());
    let (jst, kingdee) = (
        format!("http://127.0.0.1:{jp}"),
        format!("http://127.0.0.1:{kp}"),
    );
    let _sims = [
        Proc::start(
            "sim-jst",
            "jst2kd",
            &["sim", "jst", "--listen", &format!("127.0.0.1:{jp}")],
            &[],
            &dir.0,
        ),
        Proc::start(
            "sim-kingdee",
            "jst2kd",
            &["sim", "kingdee", "--listen", &format!("127.0.0.1:{kp}")],
            &[],
            &dir.0,
        ),
    ];
    for url in [format!("{jst}/_sim/stats"), format!("{kingdee}/_sim/bills")] {
        assert!(
            wait_ok(&http(), &url, Duration::from_secs(20)).await,
            "{url}"
        );
    }
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
    delete_queues(&prefix);
}
