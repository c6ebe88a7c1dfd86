//! Helpers of the end-to-end tests: find the built binaries, start them as processes with
//! their logs in files, poll HTTP endpoints with deadlines, signal and reap them.
//!
//! The binaries live in other packages, so Cargo gives no `CARGO_BIN_EXE_…` for them here; they
//! are found in the target directory, which `.ci/run` fills with `cargo build --workspace
//! --bins` before the tests (see ARCHITECTURE.md).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory of the built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// A built binary, or a panic that says how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: run `cargo build --workspace --bins` first (.ci/run does)",
        path.display()
    );
    path
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new, empty directory.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("jst2kd-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A process of ours; killed on drop if still running.
pub struct Proc {
    /// Short name, for messages.
    pub name: String,
    /// Where its stderr and stdout go.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `binary args…` with extra environment, logging to `{dir}/{name}.log`.
    pub fn start(
        name: &str,
        binary_name: &str,
        args: &[&str],
        env: &[(&str, String)],
        dir: &Path,
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(binary(binary_name));
        cmd.args(args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary_name}: {e}"));
        Self {
            name: name.into(),
            log,
            child,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for the exit status, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP client for the tests.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// The status of a GET, or 0 when nothing answered.
pub async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls until GET `url` answers 200, up to `timeout`.
pub async fn wait_ok(client: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if status(client, url).await == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// GET `url` as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// GET `url` as text.
pub async fn get_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Deletes every queue whose name starts with `prefix.`.
pub fn delete_queues(prefix: &str) {
    let Ok(out) = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
    else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        if name.starts_with(&format!("{prefix}.")) {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", name])
                .output();
        }
    }
}

/// The value of a metric series in a Prometheus text page (`name{labels}` exactly).
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// One column of `rabbitmqctl list_queues` for a queue.
fn queue_stat(name: &str, column: &str) -> Option<u64> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", column])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(name))
            .then(|| parts.next().and_then(|n| n.parse().ok()))
            .flatten()
    })
}

/// Messages in a queue (`rabbitmqctl list_queues`), ready and unacked.
pub fn queue_messages(name: &str) -> Option<u64> {
    queue_stat(name, "messages")
}

/// Unacknowledged messages of a queue (`rabbitmqctl list_queues`).
pub fn queue_unacked(name: &str) -> Option<u64> {
    queue_stat(name, "messages_unacknowledged")
}
