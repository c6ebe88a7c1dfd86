#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The deployment files against the real binaries:
//! - the jst2kd services of `docker-compose.yml` run here exactly as written (same binaries,
//!   commands and `JST2KD_…` variables), only with hosts and ports moved to loopback, and
//!   bring a working pipeline up (no Docker engine runs on these machines);
//! - every metric the Grafana dashboard and the Prometheus alerts use is exposed by a running
//!   worker;
//! - the RabbitMQ users of `deploy/rabbitmq/definitions.json` are the ones the workers run as
//!   (each with its own permissions, in a virtual host of the test's own), they are what
//!   `jst2kd permissions` prints, and they allow nothing beyond it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Proc, Scratch, binary, free_port, get_json, get_text, http, run_ok, wait_ok};
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// docker-compose.yml as JSON (PyYAML resolves the anchors and merge keys).
fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// Every document of a YAML file of the repository, as JSON (one value for one document).
fn yaml(path: &str) -> Value {
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = run_ok(
        Command::new(python)
            .args([
                "-c",
                "import json, sys, yaml; d = [x for x in yaml.safe_load_all(open(sys.argv[1])) if x]; print(json.dumps(d[0] if len(d) == 1 else d))",
            ])
            .arg(repo(path)),
        "python3 with PyYAML",
    );
    serde_json::from_str(&out).unwrap()
}

/// The users of `deploy/rabbitmq/definitions.json` (what compose's RabbitMQ loads), imported
/// into a virtual host of this test's own with the test's id after each name (users are the
/// whole broker's); the virtual host and the users are deleted on drop.
struct Users {
    vhost: String,
    id: String,
    definitions: Value,
}

impl Users {
    fn import() -> Self {
        let id = format!("t{}", std::process::id());
        let vhost = format!("jst2kdtest-deploy-{id}");
        let definitions: Value = serde_json::from_str(
            &std::fs::read_to_string(repo("deploy/rabbitmq/definitions.json")).unwrap(),
        )
        .unwrap();
        let mut ours = definitions.clone();
        ours["vhosts"] = json!([{ "name": vhost }]);
        for user in ours["users"].as_array_mut().unwrap() {
            user["name"] = json!(format!("{}-{id}", user["name"].as_str().unwrap()));
        }
        for p in ours["permissions"].as_array_mut().unwrap() {
            p["user"] = json!(format!("{}-{id}", p["user"].as_str().unwrap()));
            p["vhost"] = json!(vhost);
        }
        let users = Self {
            vhost,
            id,
            definitions,
        };
        let mut import = Command::new("rabbitmqctl")
            .args(["-q", "import_definitions", "--format", "json"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("rabbitmqctl");
        std::io::Write::write_all(
            &mut import.stdin.take().unwrap(),
            ours.to_string().as_bytes(),
        )
        .unwrap();
        assert!(
            import.wait().unwrap().success(),
            "rabbitmqctl import_definitions"
        );
        // The import finishes in the background.
        let expected = ours["permissions"].as_array().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("rabbitmqctl")
                .args(["-q", "list_permissions", "-p", &users.vhost])
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(&users.id))
                .count();
            if listed == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the definitions were not imported"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        users
    }

    /// The URL compose gives `user`, on loopback in our virtual host as our copy of the user.
    fn local(&self, compose_url: &str) -> String {
        let mut url = compose_url.replace(
            "@rabbitmq:5672/%2f",
            &format!("@127.0.0.1:5672/{}", self.vhost),
        );
        for user in self.definitions["users"].as_array().unwrap() {
            let name = user["name"].as_str().unwrap();
            url = url.replace(
                &format!("amqp://{name}:"),
                &format!("amqp://{name}-{}:", self.id),
            );
        }
        url
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .output();
        for user in self.definitions["users"].as_array().unwrap() {
            let name = format!("{}-{}", user["name"].as_str().unwrap(), self.id);
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", &name])
                .output();
        }
    }
}

/// The URL of `service` in docker-compose.yml.
fn compose_url(compose: &Value, service: &str) -> String {
    compose["services"][service]["environment"]["JST2KD_AMQP__URL"]
        .as_str()
        .unwrap_or_else(|| panic!("{service} has a JST2KD_AMQP__URL"))
        .to_string()
}

/// The RabbitMQ error code of a refused operation.
fn refused(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
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
    let compose = compose();
    let services = &compose["services"];
    // The users compose's RabbitMQ creates, and a virtual host of this test's own (the
    // workers use the default prefix there, as in compose).
    let users = Users::import();
    let (jp, kp, tempo) = (free_port(), free_port(), free_port());
    let rewrite = |s: &str, metrics_port: u16| {
        users
            .local(s)
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
    let mut producer_env = Vec::new();
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
        let env: Vec<(String, String)> = service["environment"]
            .as_object()
            .map(|e| {
                e.iter()
                    .map(|(k, v)| (k.clone(), rewrite(v.as_str().unwrap(), port)))
                    .collect()
            })
            .unwrap_or_default();
        if name == "producer" {
            producer_env = env.clone();
        }
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
    // `jst2kd backfill` as README says to run it in compose (`docker compose exec producer`):
    // with the producer's variables, so as the producer's RabbitMQ user; the running producer
    // serves the request.
    let to = common::time::now_beijing();
    let from = to - chrono::Duration::hours(2);
    let env: Vec<(&str, String)> = producer_env
        .iter()
        .filter(|(k, _)| k != "JST2KD_METRICS__LISTEN")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let out = e2e::run_jst2kd(
        &[
            "backfill",
            "--from",
            &common::time::format_beijing(&from),
            "--to",
            &common::time::format_beijing(&to),
        ],
        &env,
    )
    .await;
    assert!(
        out.status.success(),
        "jst2kd backfill as jst2kd-producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for proc in &procs {
        let log = proc.log_text();
        assert!(
            !log.contains("ACCESS_REFUSED"),
            "a worker was refused something: {log}"
        );
    }
    drop(procs);

    // Each worker's user may do what it does and no more.
    let connect = |service: &'static str| {
        let url = users.local(&compose_url(&compose, service));
        async move {
            Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| panic!("{service} connects: {e}"))
        }
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let loader = connect("loader").await;
    let channel = loader.create_channel().await.unwrap();
    let err = channel
        .queue_declare("jst2kd.counts".into(), durable, FieldTable::default())
        .await
        .expect_err("the loader's user may not declare the transformer's queue");
    assert_eq!(refused(&err), Some(403), "{err}");
    let channel = loader.create_channel().await.unwrap();
    let err = channel
        .basic_get("jst2kd.counts".into(), BasicGetOptions::default())
        .await
        .expect_err("the loader's user may not read count documents");
    assert_eq!(refused(&err), Some(403), "{err}");
    let producer = connect("producer").await;
    let channel = producer.create_channel().await.unwrap();
    let err = channel
        .queue_delete("jst2kd.dead".into(), QueueDeleteOptions::default())
        .await
        .expect_err("the producer's user may not delete the dead letters");
    assert_eq!(refused(&err), Some(403), "{err}");
    // KEDA's user reads depths (a passive declaration) and nothing else.
    let keda_url = users.local("amqp://jst2kd-keda:keda-demo@rabbitmq:5672/%2f");
    let keda = Connection::connect(&keda_url, ConnectionProperties::default())
        .await
        .expect("the KEDA user connects");
    let channel = keda.create_channel().await.unwrap();
    channel
        .queue_declare("jst2kd.bills".into(), passive, FieldTable::default())
        .await
        .expect("the KEDA user reads a queue's depth");
    let err = channel
        .basic_get("jst2kd.bills".into(), BasicGetOptions::default())
        .await
        .expect_err("the KEDA user may not take a bill");
    assert_eq!(refused(&err), Some(403), "{err}");

    // The operations commands run as jst2kd-ops, as compose's `ops` service has them: the
    // whole topology, and a server-named reply queue (`jst2kd backfill`).
    let ops_url = users.local(&compose_url(&compose, "ops"));
    let ops = Connection::connect(&ops_url, ConnectionProperties::default())
        .await
        .expect("jst2kd-ops connects");
    let channel = ops.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .expect("jst2kd-ops declares a reply queue");
    let out = Command::new(binary("jst2kd"))
        .args(["dlq", "list", "--format", "json"])
        .env("JST2KD_AMQP__URL", &ops_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jst2kd dlq list as jst2kd-ops: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/rabbitmq/definitions.json gives every user what `jst2kd permissions` prints for the
/// default prefix, plus the administrator.
#[test]
fn the_compose_users_have_the_permissions_jst2kd_permissions_prints() {
    let out = Command::new(binary("jst2kd"))
        .args(["permissions", "--format", "json"])
        .env_remove("JST2KD_AMQP__PREFIX")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let definitions: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/rabbitmq/definitions.json")).unwrap(),
    )
    .unwrap();
    let shipped: Vec<&Value> = definitions["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["user"] != "jst2kd")
        .collect();
    let printed: Vec<&Value> = printed.as_array().unwrap().iter().collect();
    assert_eq!(
        shipped, printed,
        "deploy/rabbitmq/definitions.json (python3 deploy/rabbitmq/sync-permissions.py)"
    );
    let users: Vec<&str> = definitions["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    for p in &printed {
        assert!(users.contains(&p["user"].as_str().unwrap()), "{p}");
    }
    // The README's `rabbitmqctl` lines are what the text format prints.
    let out = Command::new(binary("jst2kd"))
        .args(["permissions"])
        .env_remove("JST2KD_AMQP__PREFIX")
        .output()
        .unwrap();
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("rabbitmqctl set_permissions"))
            .map(str::to_string)
            .collect()
    };
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    assert_eq!(
        lines(&readme),
        lines(&String::from_utf8_lossy(&out.stdout)),
        "README's set_permissions lines"
    );
    // The Kubernetes component's users have the same, but for jst2kd-ops.
    let k8s = yaml("deploy/k8s-rabbitmq/component/users.yaml");
    let k8s: Vec<Value> = k8s
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "Permission")
        .map(|d| {
            let p = &d["spec"]["permissions"];
            json!({
                "user": d["spec"]["userReference"]["name"],
                "vhost": d["spec"]["vhost"],
                "configure": p["configure"],
                "write": p["write"],
                "read": p["read"],
            })
        })
        .collect();
    let without_ops: Vec<&Value> = printed
        .iter()
        .copied()
        .filter(|p| p["user"] != "jst2kd-ops")
        .collect();
    assert_eq!(
        k8s.iter().collect::<Vec<_>>(),
        without_ops,
        "deploy/k8s-rabbitmq/component/users.yaml (python3 deploy/rabbitmq/sync-permissions.py)"
    );
    // Only the administrator has a tag: the others cannot log in to the management UI.
    for user in definitions["users"].as_array().unwrap() {
        let tags = user["tags"].as_array().unwrap();
        assert_eq!(tags.is_empty(), user["name"] != "jst2kd", "{user}");
    }
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
