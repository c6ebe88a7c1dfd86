#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The deployment files against the real binaries:
//! - the jst2kd services of `docker-compose.yml` run here exactly as written (same binaries,
//!   commands and `JST2KD_…` variables), only with hosts and ports moved to loopback, and
//!   bring a working pipeline up (no Docker engine runs on these machines);
//! - every metric the Grafana dashboard and the Prometheus alerts use is exposed by a running
//!   worker.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Proc, Scratch, delete_queues, free_port, get_json, get_text, http, wait_ok};
use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// docker-compose.yml as JSON (PyYAML resolves the anchors and merge keys).
fn compose() -> Value {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo("docker-compose.yml"))
        .output()
        .expect("python3 with PyYAML");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Metric names a PromQL text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("jst2kd_") {
        let start = i + pos;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        let prefixed_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !prefixed_by_word {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            names.insert(base.to_string());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_compose_services_run_as_written_and_expose_every_metric_the_dashboard_and_alerts_use()
{
    let dir = Scratch::new("deploy");
    let prefix = format!("jst2kdtest-e2e-deploy-{}", std::process::id());
    let compose = compose();
    let services = &compose["services"];
    let (jp, kp, tempo) = (free_port(), free_port(), free_port());
    let rewrite = |s: &str, metrics_port: u16| {
        s.replace(
            "amqp://jst2kd:jst2kd@rabbitmq:5672",
            "amqp://guest:guest@127.0.0.1:5672",
        )
        .replace("http://sim-jst:8081", &format!("http://127.0.0.1:{jp}"))
        .replace("http://sim-kingdee:8082", &format!("http://127.0.0.1:{kp}"))
        .replace("0.0.0.0:8081", &format!("127.0.0.1:{jp}"))
        .replace("0.0.0.0:8082", &format!("127.0.0.1:{kp}"))
        .replace("0.0.0.0:9791", &format!("127.0.0.1:{metrics_port}"))
        .replace("0.0.0.0:9792", &format!("127.0.0.1:{metrics_port}"))
        .replace("0.0.0.0:9793", &format!("127.0.0.1:{metrics_port}"))
        .replace("/var/lib/jst2kd/", &format!("{}/", dir.0.display()))
        // No Tempo here: the exports fail, are counted, and the work goes on.
        .replace("http://tempo:4318", &format!("http://127.0.0.1:{tempo}"))
    };
    let mut procs = Vec::new();
    let mut metrics = Vec::new();
    for name in [
        "sim-jst",
        "sim-kingdee",
        "loader",
        "transformer",
        "producer",
    ] {
        let service = &services[name];
        let port = free_port();
        let command: Vec<String> = service["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| rewrite(c.as_str().unwrap(), port))
            .collect();
        let mut env: Vec<(String, String)> = service["environment"]
            .as_object()
            .map(|e| {
                e.iter()
                    .map(|(k, v)| (k.clone(), rewrite(v.as_str().unwrap(), port)))
                    .collect()
            })
            .unwrap_or_default();
        // The one addition: a queue prefix of this test's own.
        env.push(("JST2KD_AMQP__PREFIX".into(), prefix.clone()));
        let env_refs: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        let proc = Proc::start(name, &command[0], &args, &env_refs, &dir.0);
        if name.starts_with("sim") {
            let p = if name == "sim-jst" { jp } else { kp };
            assert!(
                wait_ok(
                    &http(),
                    &format!("http://127.0.0.1:{p}/_sim/stats"),
                    Duration::from_secs(20)
                )
                .await,
                "{name}: {}",
                proc.log_text()
            );
        } else {
            let url = format!("http://127.0.0.1:{port}");
            assert!(
                wait_ok(&http(), &format!("{url}/readyz"), Duration::from_secs(30)).await,
                "{name}: {}",
                proc.log_text()
            );
            metrics.push(url);
        }
        procs.push(proc);
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let bills = get_json(&http(), &format!("http://127.0.0.1:{kp}/_sim/bills"))
            .await
            .unwrap();
        if bills.as_array().is_some_and(|b| b.len() >= 100) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the compose pipeline books bills"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut exposed = BTreeSet::new();
    for url in &metrics {
        let page = get_text(&http(), &format!("{url}/metrics")).await.unwrap();
        exposed.extend(
            page.lines()
                .filter(|l| l.starts_with("# TYPE "))
                .filter_map(|l| l.split_whitespace().nth(2))
                .map(str::to_string),
        );
    }
    let dashboard = std::fs::read_to_string(repo("deploy/grafana/jst2kd.json")).unwrap();
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !exposed.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but exposed by no worker: {missing:?}"
    );
    drop(procs);
    delete_queues(&prefix);
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le) (rate(jst2kd_end_to_end_seconds_bucket[5m]))) / x_jst2kd_no"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["jst2kd_end_to_end_seconds".to_string()]
    );
}
