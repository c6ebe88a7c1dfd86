#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst2kd check` against both simulators and the real RabbitMQ.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sim(args: &[&str]) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_jst2kd"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "simulator on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_reports_each_part_and_fails_on_a_wrong_secret() {
    let (jp, kp) = (port(), port());
    let _jst = sim(&["sim", "jst", "--listen", &format!("127.0.0.1:{jp}")]);
    let _kingdee = sim(&["sim", "kingdee", "--listen", &format!("127.0.0.1:{kp}")]);
    wait_listening(jp);
    wait_listening(kp);
    let prefix = format!("jst2kdtest-check-{}", std::process::id());
    let run = |extra: &[(&str, &str)]| {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/local.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jst2kd"));
        cmd.args(["check", "--config"]).arg(config);
        cmd.env("JST2KD_AMQP__PREFIX", &prefix)
            .env("JST2KD_JST__BASE_URL", format!("http://127.0.0.1:{jp}"))
            .env(
                "JST2KD_KINGDEE__BASE_URL",
                format!("http://127.0.0.1:{kp}/k3cloud"),
            )
            .env(
                "JST2KD_PRODUCER__CHECKPOINT",
                std::env::temp_dir().join(format!("{prefix}.checkpoint.json")),
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
    for q in [
        "counts",
        "bills",
        "dead",
        "counts.retry.5s",
        "counts.retry.30s",
        "counts.retry.120s",
        "counts.retry.600s",
        "bills.retry.5s",
        "bills.retry.30s",
        "bills.retry.120s",
        "bills.retry.600s",
    ] {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &format!("{prefix}.{q}")])
            .output();
    }
}
