#![allow(clippy::expect_used, clippy::unwrap_used)]
//! RabbitMQ over TLS with client certificates: a node of the test's own whose only listener is
//! TLS and asks every client for a certificate (tests/cluster/cluster.sh `tls`; certificates
//! made here with openssl). The pipeline works over it with `amqp.ca_file`, `amqp.cert_file`
//! and `amqp.key_file`; without the CA, or without the client certificate, a worker is refused
//! and says so in one line naming the node, and stays not ready.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Proc, Scratch, Sims, certificates, free_port, get_json, http, run_ok, status, wait_ok};

/// The TLS node; stopped and deleted when dropped.
struct Node {
    dir: PathBuf,
    name: String,
    port: u16,
}

impl Node {
    fn start(dir: PathBuf, name: &str, certs: &Path) -> Self {
        let mut node = Self {
            dir: dir.clone(),
            name: name.to_string(),
            port: 0,
        };
        let out = run_ok(
            Command::new("bash")
                .arg(e2e::cluster_script())
                .args(["tls", &dir.display().to_string(), name])
                .arg(certs),
            "the TLS node's start",
        );
        node.port = out
            .lines()
            .find_map(|l| l.trim().parse().ok())
            .expect("its port");
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        e2e::stop_nodes(&self.dir, &self.name, 1);
    }
}

async fn worker(name: &str, config: &Path, dir: &Scratch, log: &str) -> (Proc, String) {
    let port = free_port();
    let env = [("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
    let proc = Proc::start(
        log,
        name,
        &["--config", &config.display().to_string()],
        &env,
        &dir.0,
    );
    (proc, format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn the_pipeline_runs_over_tls_with_client_certificates_and_is_refused_without() {
    let dir = Scratch::new("amqps");
    let certs = dir.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let node = Node::start(
        dir.path("node"),
        &format!("jst2kdtls{}", std::process::id()),
        &certs,
    );
    let prefix = "jst2kdtest-amqps";
    let sims = Sims::start(&dir.0, &["--generate", "40", "--seed", "3"]).await;
    let base = sims.worker_toml(
        prefix,
        &dir.path("producer.checkpoint.json"),
        &e2e::GENERATED_WAREHOUSES,
        "",
    );
    // The certificate names localhost: the URL says localhost.
    let url = format!(
        "amqps://guest:guest@localhost:{}/%2f?heartbeat=5",
        node.port
    );
    let with = |tls: &str| {
        base.replace(
            "url = \"amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5\"",
            &format!("url = \"{url}\"\n{tls}"),
        )
    };
    let ca = format!("ca_file = \"{}\"", certs.join("ca.pem").display());
    let client = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"",
        certs.join("client.pem").display(),
        certs.join("client.key").display()
    );
    let full = dir.path("full.toml");
    std::fs::write(&full, with(&format!("{ca}\n{client}"))).unwrap();

    // The pipeline over TLS.
    let mut workers = Vec::new();
    for name in ["loader", "transformer", "producer"] {
        let (proc, url) = worker(name, &full, &dir, name).await;
        assert!(
            wait_ok(&http(), &format!("{url}/readyz"), Duration::from_secs(60)).await,
            "{name} ready over TLS; its log:\n{}",
            proc.log_text()
        );
        workers.push((proc, url));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bills = get_json(&http(), &format!("{}/_sim/bills", sims.kingdee))
            .await
            .unwrap();
        if bills.as_array().unwrap().len() >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bills through a TLS broker; transformer log:\n{}",
            workers[1].0.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Refused: the broker's CA unknown; no client certificate; a plain AMQP port (the usual
    // broker's) behind amqps://.
    let plain = with(&format!("{ca}\n{client}"))
        .replace(&format!("localhost:{}/", node.port), "localhost:5672/");
    for (case, text, where_) in [
        (
            "without-ca",
            with(&client),
            format!("localhost:{}", node.port),
        ),
        (
            "without-client-certificate",
            with(&ca),
            format!("localhost:{}", node.port),
        ),
        ("plain-port", plain, "localhost:5672".to_string()),
    ] {
        let path = dir.path(&format!("{case}.toml"));
        std::fs::write(&path, text).unwrap();
        let (proc, url) = worker("transformer", &path, &dir, case).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = loop {
            let log = proc.log_text();
            if log.contains("Cannot reach RabbitMQ") {
                break log;
            }
            assert!(Instant::now() < deadline, "{case}: refused; log:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let line = log
            .lines()
            .find(|l| l.contains("Cannot reach RabbitMQ"))
            .unwrap();
        eprintln!("{case}: {line}");
        assert!(line.contains(&where_), "{case}: names the node: {line}");
        assert!(
            !line.contains("guest:guest"),
            "{case}: never the URL: {line}"
        );
        let why = match case {
            "without-ca" => "UnknownIssuer",
            "without-client-certificate" => "CertificateRequired",
            _ => "TLS handshake failed",
        };
        assert!(line.contains(why), "{case}: says why: {line}");
        assert_eq!(status(&http(), &format!("{url}/readyz")).await, 503);
    }

    for (proc, _) in &mut workers {
        proc.signal("TERM");
        assert_eq!(
            proc.wait_exit(Duration::from_secs(30)).await,
            Some(0),
            "{} exits 0; its log:\n{}",
            proc.name,
            proc.log_text()
        );
    }
}
