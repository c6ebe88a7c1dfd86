//! Helpers of the end-to-end tests: build and find the binaries, start them as processes with
//! their logs in files, poll HTTP endpoints with deadlines, signal and reap them.
//!
//! The binaries live in other packages, so Cargo gives no `CARGO_BIN_EXE_…` for them here. The
//! harness builds them itself, once per test process, with the very command `.ci/run` uses
//! (`cargo build --workspace --bins`, same profile and target directory, so the build is a
//! no-op when they are current and never flips features): a test can never run a stale binary
//! left in `target/` (see ARCHITECTURE.md).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The target directory the tests were built in.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The directory of the built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    target_dir().join("debug")
}

/// Builds every binary of the workspace, once per test process; a failed build fails the test
/// with the compiler's output.
fn build_binaries() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["build", "--workspace", "--bins", "--quiet"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .env("CARGO_TARGET_DIR", target_dir())
            .stdin(Stdio::null());
        // The environment `cargo test` gave this process, less what it added for the test
        // (package variables, the library path into target/): with them, the build would see
        // a changed environment and rebuild, here and again in the next `cargo build`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if (name.starts_with("CARGO_")
                && !matches!(
                    &*name,
                    "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_TERM_COLOR"
                )
                && !name.starts_with("CARGO_BUILD_")
                && !name.starts_with("CARGO_NET_")
                && !name.starts_with("CARGO_HTTP_")
                && !name.starts_with("CARGO_REGISTRIES_"))
                || name == "CARGO"
            {
                command.env_remove(&*name);
            }
        }
        match outer_library_path() {
            Some(path) => command.env("LD_LIBRARY_PATH", path),
            None => command.env_remove("LD_LIBRARY_PATH"),
        };
        let out = command
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("cargo build --workspace --bins failed:\n{e}");
    }
}

/// `LD_LIBRARY_PATH` without the entries `cargo test` put in front (the target directory and
/// the toolchain's libraries); `None` when nothing else is left.
fn outer_library_path() -> Option<std::ffi::OsString> {
    let path = std::env::var_os("LD_LIBRARY_PATH")?;
    let target = target_dir();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|p| !p.starts_with(&target) && !p.to_string_lossy().contains("/rustlib/"))
        .filter(|p| !p.to_string_lossy().contains("/toolchains/"))
        .collect();
    if kept.is_empty() {
        None
    } else {
        std::env::join_paths(kept).ok()
    }
}

/// A binary of the workspace, built from the current sources.
pub fn binary(name: &str) -> PathBuf {
    build_binaries();
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {} after building it",
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

    /// Waits for the exit status, up to `timeout` (without blocking the async runtime the
    /// test's own servers and clients run on).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// A `[mapping.warehouses]` for every warehouse the Jushuitan simulator generates
/// (`sim::jst::GENERATED_WAREHOUSES`), as `config/local.toml` maps them.
pub const GENERATED_WAREHOUSES: [(&str, &str); 5] = [
    ("1", "CK001"),
    ("2", "CK002"),
    ("3", "CK003"),
    ("4", "CK004"),
    ("10001:1", "CK101"),
];

/// The local RabbitMQ as the workers of `prefix` see it (topology declared), named `name`.
pub async fn rabbit(prefix: &str, name: &str) -> common::queue::rabbit::RabbitBroker {
    let amqp = common::queue::AmqpConfig {
        prefix: prefix.to_string(),
        ..common::queue::AmqpConfig::default()
    };
    common::queue::rabbit::RabbitBroker::connect(
        common::config::Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
        name,
        common::queue::Topology::from_config(&amqp),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("RabbitMQ on 127.0.0.1:5672")
}

/// Runs the `jst2kd` binary with `args` and environment `env` to its end, within three
/// minutes (killed if the test gives up first).
pub async fn run_jst2kd(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let run = tokio::process::Command::new(binary("jst2kd"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("jst2kd ends within three minutes")
        .expect("jst2kd runs")
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

/// A numeric flag of a benchmark's command line (`--documents 5000`), or `default`.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A memory figure of a process from `/proc/…/status` (`"VmRSS:"` now, `"VmHWM:"` its peak),
/// in MiB: of process `pid`, or of this one; 0 when it cannot be read.
pub fn proc_mib(pid: Option<u32>, field: &str) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/status".to_string(),
        |p| format!("/proc/{p}/status"),
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Both simulators as processes (`jst2kd sim jst` with `jst_args`, `jst2kd sim kingdee`) on free
/// loopback ports, up and answering; stopped when dropped.
pub struct Sims {
    /// Base URL of the Jushuitan simulator.
    pub jst: String,
    /// Base URL of the Kingdee simulator (its site is `{kingdee}/k3cloud`).
    pub kingdee: String,
    _procs: [Proc; 2],
}

impl Sims {
    /// The configuration file of the three workers against these simulators (with their
    /// built-in credentials), on the local RabbitMQ under `prefix`: the producer keeps its
    /// checkpoint at `checkpoint` and starts 31 days back, JST warehouses map as `warehouses`,
    /// and `extra` adds sections the file does not set (such as `[loader]`).
    pub fn worker_toml(
        &self,
        prefix: &str,
        checkpoint: &Path,
        warehouses: &[(&str, &str)],
        extra: &str,
    ) -> String {
        let warehouses: String = warehouses
            .iter()
            .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
            .collect();
        let mapping = format!("org = \"100\"\n[mapping.warehouses]\n{warehouses}");
        self.worker_toml_with(prefix, checkpoint, &mapping, extra)
    }

    /// [`Sims::worker_toml`] with the whole `[mapping]` section's body given (its keys, then
    /// its sub-tables).
    pub fn worker_toml_with(
        &self,
        prefix: &str,
        checkpoint: &Path,
        mapping: &str,
        extra: &str,
    ) -> String {
        format!(
            r#"[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5"
prefix = "{prefix}"
[runtime]
shutdown_timeout = "20s"
[jst]
base_url = "{jst}"
app_key = "local-app-key"
app_secret = "local-app-secret"
access_token = "local-access-token"
[producer]
poll_interval = "1s"
start_at = "31d"
lag = "0s"
checkpoint = "{checkpoint}"
[kingdee]
base_url = "{kingdee}/k3cloud"
acct_id = "local-acct"
user_name = "local-user"
app_id = "123456_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY"
app_secret = "0123456789abcdef0123456789abcdef"
[mapping]
{mapping}
{extra}
"#,
            jst = self.jst,
            kingdee = self.kingdee,
            checkpoint = checkpoint.display(),
        )
    }

    /// Starts both, logging into `dir`, and waits until each answers.
    pub async fn start(dir: &Path, jst_args: &[&str]) -> Self {
        Self::start_with(dir, jst_args, &[]).await
    }

    /// Starts both with arguments of their own (`--data`, `--master-data` …).
    pub async fn start_with(dir: &Path, jst_args: &[&str], kingdee_args: &[&str]) -> Self {
        let (jp, kp) = (free_port(), free_port());
        let jst_listen = format!("127.0.0.1:{jp}");
        let mut args = vec!["sim", "jst", "--listen", &jst_listen];
        args.extend_from_slice(jst_args);
        let kingdee_listen = format!("127.0.0.1:{kp}");
        let mut kargs = vec!["sim", "kingdee", "--listen", &kingdee_listen];
        kargs.extend_from_slice(kingdee_args);
        let procs = [
            Proc::start("sim-jst", "jst2kd", &args, &[], dir),
            Proc::start("sim-kingdee", "jst2kd", &kargs, &[], dir),
        ];
        let (jst, kingdee) = (
            format!("http://127.0.0.1:{jp}"),
            format!("http://127.0.0.1:{kp}"),
        );
        for url in [format!("{jst}/_sim/stats"), format!("{kingdee}/_sim/bills")] {
            assert!(
                wait_ok(&http(), &url, Duration::from_secs(20)).await,
                "simulator not up at {url}"
            );
        }
        Self {
            jst,
            kingdee,
            _procs: procs,
        }
    }
}

/// `tests/cluster/cluster.sh`: RabbitMQ nodes of a test's own (a cluster, a TLS node).
pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/cluster.sh")
}

/// Stops nodes `name-1` … `name-{n}` started by [`cluster_script`] in `dir`, and deletes
/// their data (for a guard's `Drop`).
pub fn stop_nodes(dir: &Path, name: &str, n: usize) {
    let _ = Command::new("bash")
        .arg(cluster_script())
        .args(["stop", &dir.display().to_string(), name, &n.to_string()])
        .output();
}

/// Runs `command` (named `what` in a failure) to its end, requires exit 0, and returns its
/// standard output; a failure shows both outputs.
pub fn run_ok(command: &mut Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Test certificates made with openssl in `dir`: a CA (`ca.pem`, `ca.key`), a server
/// certificate for localhost and 127.0.0.1 (`server.pem`, `server.key`) and a client
/// certificate for TLS client authentication (`client.pem`, `client.key`), both signed by the CA.
pub fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        run_ok(
            Command::new("openssl").args(args).current_dir(dir),
            &format!("openssl {args:?}"),
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=jst2kd test CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("server.ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    for (who, cn) in [("server", "localhost"), ("client", "jst2kd-worker")] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
        ]);
    }
}
