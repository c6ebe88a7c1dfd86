//! The processes a bench runs and watches: started with their logs in files, their CPU time
//! and memory read from `/proc` (Linux), stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// CPU time and memory of one process, as `/proc` tells them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User and system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// Resident memory at its peak (`VmHWM`), MiB.
    pub peak_mib: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux port that
/// matters; `getconf CLK_TCK` says so when it can be run.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The usage of process `pid`; `None` once it is gone (or off Linux).
pub fn usage(pid: u32, ticks: f64) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime); the first field here is field 3.
    let ticks_used: f64 =
        fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    Some(Usage {
        cpu_seconds: ticks_used / ticks,
        rss_mib: mib("VmRSS:"),
        peak_mib: mib("VmHWM:"),
    })
}

/// A child process of the bench; killed when dropped.
pub struct Proc {
    /// Its name in the table.
    pub name: &'static str,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
    pid: u32,
    /// The last usage read while it ran.
    pub last: Usage,
}

impl Proc {
    /// Starts `program args…` with `env` added, its output in `{dir}/{name}.log`.
    pub fn start(
        name: &'static str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(program);
        // Only the bench's own settings: a deployment's JST2KD_… variables (credentials, a
        // mapping, retry tiers) would point the workers elsewhere than the bench expects.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("JST2KD_") {
                command.env_remove(&name);
            }
        }
        let child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Self {
            name,
            log,
            child,
            pid,
            last: Usage::default(),
        })
    }

    /// Reads its usage now (kept in `last`); an error when it has exited.
    pub fn sample(&mut self, ticks: f64) -> anyhow::Result<Usage> {
        if let Ok(Some(status)) = self.child.try_wait() {
            anyhow::bail!(
                "{} exited ({status}); its log: {}\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        if let Some(u) = usage(self.pid, ticks) {
            self.last = u;
        }
        Ok(self.last)
    }

    /// SIGTERM, then waits up to `grace` for it to exit (killed past it). True when it
    /// exited 0.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.success();
        }
        // The shell's own `kill` (slim images have no procps).
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.pid)])
            .status()
            .await;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The RabbitMQ node listening on `port` of this machine: the `beam.smp` process holding the
/// listening socket (from `/proc/net/tcp*` and the processes' descriptors). `None` when the
/// broker is elsewhere, or its process cannot be seen.
pub fn broker_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let local_port = f.get(1)?.rsplit_once(':')?.1;
                    let listening = f.get(3)? == &"0A";
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.filter_map(Result::ok).any(|fd| {
                        std::fs::read_link(fd.path()).is_ok_and(|target| {
                            inodes.iter().any(|i| target.as_os_str() == i.as_str())
                        })
                    })
                })
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_usage() {
        let u = usage(std::process::id(), clock_ticks()).expect("/proc/self");
        assert!(u.rss_mib > 0.0 && u.peak_mib >= u.rss_mib, "{u:?}");
        assert!(u.cpu_seconds >= 0.0);
        assert_eq!(usage(u32::MAX, 100.0), None);
    }

    #[test]
    fn no_broker_listens_on_a_closed_port() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        // A port nothing listens on any more.
        assert_eq!(broker_pid(port), None);
    }
}
