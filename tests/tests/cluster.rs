#![allow(clippy::expect_used, clippy::unwrap_used)]
//! A three-node RabbitMQ cluster of the test's own (tests/cluster/cluster.sh: own node names,
//! ports and data directories beside the usual broker), the three workers on it with
//! `amqp.url` listing the nodes, and the node most workers are connected to killed with
//! SIGKILL mid-run: every expected bill is booked exactly once, nothing is dead-lettered, and
//! every worker is ready again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Proc, Scratch, Sims, free_port, get_json, http, run_ok, status, wait_ok};
use serde_json::Value;

/// The nodes; stopped and their data deleted when dropped.
struct Cluster {
    dir: PathBuf,
    name: String,
    ports: Vec<u16>,
    killed: BTreeSet<usize>,
}

impl Cluster {
    /// The last warnings and errors of each node's log, for a failure's message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.ports.len() {
            let Ok(entries) = std::fs::read_dir(self.dir.join(format!("n{i}/log"))) else {
                continue;
            };
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("[error]") || l.contains("[warning]"))
                    .collect();
                out.push_str(&format!("---- node {i} {}\n", entry.path().display()));
                for line in &lines[lines.len().saturating_sub(15)..] {
                    out.push_str(&line.chars().take(400).collect::<String>());
                    out.push('\n');
                }
            }
        }
        out
    }

    fn start(dir: PathBuf, name: &str, n: usize) -> Self {
        // The guard first: a start that fails halfway still stops what it started.
        let mut cluster = Self {
            dir: dir.clone(),
            name: name.to_string(),
            ports: vec![0; n],
            killed: BTreeSet::new(),
        };
        let out = run_ok(
            Command::new("bash").arg(e2e::cluster_script()).args([
                "start",
                &dir.display().to_string(),
                name,
                &n.to_string(),
            ]),
            "the cluster's start",
        );
        let ports: Vec<u16> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        assert_eq!(ports.len(), n, "one AMQP port per node");
        cluster.ports = ports;
        cluster
    }

    fn node(&self, i: usize) -> String {
        format!("{}-{}@localhost", self.name, i + 1)
    }

    /// A node still running, for `rabbitmqctl`.
    fn alive(&self) -> String {
        let i = (0..self.ports.len())
            .find(|i| !self.killed.contains(i))
            .unwrap();
        self.node(i)
    }

    fn ctl(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("rabbitmqctl")
                .args(["-q", "-n", &self.alive()])
                .args(args),
            &format!("rabbitmqctl {args:?}"),
        )
    }

    /// The `amqp.url` of every node.
    fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("amqp://guest:guest@127.0.0.1:{p}/%2f?heartbeat=5"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many client connections each node holds.
    fn connections(&self) -> Vec<usize> {
        let text = self.ctl(&["list_connections", "port"]);
        let mut per_node = vec![0; self.ports.len()];
        for line in text.lines() {
            if let Ok(port) = line.trim().parse::<u16>()
                && let Some(i) = self.ports.iter().position(|p| *p == port)
            {
                per_node[i] += 1;
            }
        }
        per_node
    }

    fn kill(&mut self, i: usize) {
        run_ok(
            Command::new("bash").arg(e2e::cluster_script()).args([
                "kill",
                &self.dir.display().to_string(),
                &self.name,
                &(i + 1).to_string(),
            ]),
            "killing a node",
        );
        self.killed.insert(i);
    }

    /// Messages in each queue of `prefix` (ready and unacked).
    fn queues(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.ctl(&["list_queues", "name", "messages"])
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (name, count) = (parts.next()?, parts.next()?.parse().ok()?);
                name.starts_with(&format!("{prefix}."))
                    .then(|| (name.to_string(), count))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        e2e::stop_nodes(&self.dir, &self.name, self.ports.len());
    }
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        _ => panic!("not a number: {v}"),
    }
}

/// The bill numbers SPEC section 4 asks for (the entries are pipeline.rs's to check): a
/// confirmed or archived document with a loss line (a batch of its own counted when not 0).
fn expected_bills(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter(|d| matches!(d["status"].as_str(), Some("Confirmed" | "Archive")))
        .filter(|d| {
            d["items"].as_array().unwrap().iter().any(|line| {
                num(&line["qty"]) < 0.0
                    && line
                        .get("batchs")
                        .and_then(Value::as_array)
                        .is_none_or(|b| b.is_empty() || b.iter().any(|b| num(&b["qty"]) != 0.0))
            })
        })
        .map(|d| format!("JSTPD{}", d["io_id"]))
        .collect()
}

/// The last lines of each worker's log, for a failure's message.
fn log_tails(workers: &[(Proc, String)]) -> String {
    workers
        .iter()
        .map(|(proc, _)| {
            let log = proc.log_text();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(12)..].join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n----\n")
}

async fn worker(name: &str, config: &str, dir: &Scratch) -> (Proc, String) {
    let port = free_port();
    let env = [("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
    let proc = Proc::start(name, name, &["--config", config], &env, &dir.0);
    let base = format!("http://127.0.0.1:{port}");
    if !wait_ok(&http(), &format!("{base}/readyz"), Duration::from_secs(60)).await {
        panic!("{name} not ready; its log:\n{}", proc.log_text());
    }
    (proc, base)
}

#[tokio::test]
async fn a_node_killed_mid_run_loses_nothing_and_books_nothing_twice() {
    let dir = Scratch::new("cluster");
    let name = format!("jst2kdc{}", std::process::id());
    let mut cluster = Cluster::start(dir.path("nodes"), &name, 3);
    let prefix = "jst2kdtest-cluster";
    // Kingdee answers in 50 ms and the loader saves five bills a call, one call at a time:
    // the run lasts long enough to lose a node in the middle of it.
    let sims = Sims::start_with(
        &dir.0,
        &["--generate", "400", "--seed", "5"],
        &["--latency", "50"],
    )
    .await;
    let config = sims
        .worker_toml(
            prefix,
            &dir.path("producer.checkpoint.json"),
            &e2e::GENERATED_WAREHOUSES,
            "[loader]\nbatch_size = 5\nconcurrency = 1\nlinger = \"20ms\"\n",
        )
        .replace(
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5",
            &cluster.url(),
        );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let config = path.display().to_string();
    let docs = get_json(&http(), &format!("{}/_sim/counts", sims.jst))
        .await
        .unwrap();
    let expected = expected_bills(docs.as_array().unwrap());
    assert!(expected.len() > 100, "a run worth interrupting");

    let mut workers = Vec::new();
    for name in ["loader", "transformer", "producer"] {
        workers.push(worker(name, &config, &dir).await);
    }
    // The work queues are replicated on every node (RabbitMQ's default initial group size
    // here; the README states what we rely on).
    let members = cluster.ctl(&["list_queues", "name", "members"]);
    for queue in ["counts", "bills"] {
        let line = members
            .lines()
            .find(|l| l.starts_with(&format!("{prefix}.{queue}\t")))
            .unwrap_or_else(|| panic!("{prefix}.{queue} in:\n{members}"));
        assert_eq!(line.matches("@localhost").count(), 3, "{line}");
    }
    let bills = || async {
        get_json(&http(), &format!("{}/_sim/bills", sims.kingdee))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while bills().await.len() < 20 {
        assert!(Instant::now() < deadline, "the run started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connections = cluster.connections();
    let busiest = (0..connections.len())
        .max_by_key(|i| connections[*i])
        .unwrap();
    let before = bills().await.len();
    cluster.kill(busiest);
    eprintln!(
        "killed node {} of connections {connections:?} with {before} of {} bills booked",
        busiest + 1,
        expected.len()
    );
    assert!(before < expected.len(), "killed mid-run");

    // Every bill, exactly once; the queues empty; nothing dead.
    let deadline = Instant::now() + Duration::from_secs(180);
    let saved = loop {
        let saved = bills().await;
        let queues = cluster.queues(prefix);
        let busy: u64 = queues
            .iter()
            .filter(|(q, _)| !q.ends_with(".dead") && !q.ends_with(".events"))
            .map(|(_, n)| n)
            .sum();
        if saved.len() >= expected.len() && busy == 0 {
            break saved;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} bills after the node was lost; queues {queues:?}\n{}\n{}",
            saved.len(),
            expected.len(),
            log_tails(&workers),
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for b in &saved {
        *seen
            .entry(b["bill_no"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "bills booked twice: {twice:?}");
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the expected bills"
    );
    assert_eq!(
        cluster.queues(prefix).get(&format!("{prefix}.dead")),
        Some(&0),
        "nothing dead-lettered"
    );
    // Every worker is connected to a node that is left, and ready.
    for (proc, url) in &workers {
        assert!(
            wait_ok(&http(), &format!("{url}/readyz"), Duration::from_secs(60)).await,
            "{} ready again; its log:\n{}",
            proc.name,
            proc.log_text()
        );
    }
    // Each worker's connection and the producer's lock are on the nodes that are left.
    let left: usize = cluster.connections().iter().sum();
    assert!(left >= 4, "connections on the nodes left: {left}");
    for (proc, url) in &mut workers {
        assert_eq!(status(&http(), &format!("{url}/healthz")).await, 200);
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
