//! The processes a benchmark starts and watches: Switchboard roles (`switchboard <role>` with the
//! scenario's config) and the bare ceiling service, each with its log in a file, stopped with
//! SIGTERM (then killed) at the end; and what `/proc` says about a process: CPU ticks, resident
//! and peak resident memory. Parsing `/proc` text is pure and tested here; nothing here decides
//! what a figure means.
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A child process the benchmark started.
pub struct ChildProcess {
    pub name: String,
    child: Child,
    pid: u32,
    pub log: PathBuf,
}

impl ChildProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then up to `grace` for the process to drain and exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Whether it is still running (not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Where the `switchboard` binary is: `--switchboard`, else next to this executable (both are
/// built into the same `target/release`).
pub fn switchboard_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("switchboard"),
    };
    if !path.is_file() {
        bail!(
            "no switchboard binary at {} (build it: cargo build --release --bin switchboard, \
             or pass --switchboard PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Processes of one role as `Watch` names them: `role`, `role 2`, `role 3`, …
pub fn named(role: &str, processes: &[ChildProcess]) -> Vec<(String, String)> {
    processes
        .iter()
        .enumerate()
        .map(|(i, p)| match i {
            0 => (role.to_owned(), p.pid().to_string()),
            _ => (format!("{role} {}", i + 1), p.pid().to_string()),
        })
        .collect()
}

/// Starts `switchboard --config <config> <role>`; admin listeners on port 0 so several roles
/// and scenarios never collide; stderr (the logs) to `log`.
pub fn spawn_role(
    binary: &Path,
    config: &Path,
    role: &str,
    log_level: &str,
    log: PathBuf,
) -> anyhow::Result<ChildProcess> {
    let file = std::fs::File::create(&log)
        .with_context(|| format!("cannot create the log {}", log.display()))?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg(role)
        .env("SWITCHBOARD_INGRESS__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_WORKER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_DISPATCHER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_CONNECTOR__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", log_level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} {role}", binary.display()))?;
    let pid = child.id().context("the child exited at once")?;
    Ok(ChildProcess {
        name: role.to_owned(),
        child,
        pid,
        log,
    })
}

/// Starts this executable with `args` (the ceiling service) and reads the address it prints
/// as its first line of stdout.
pub async fn spawn_self(
    name: &str,
    args: &[String],
    log: PathBuf,
    timeout: Duration,
) -> anyhow::Result<(ChildProcess, String)> {
    let file = std::fs::File::create(&log)
        .with_context(|| format!("cannot create the log {}", log.display()))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id().context("the child exited at once")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(timeout, lines.next_line())
        .await
        .with_context(|| {
            format!(
                "{name} did not start within {timeout:?} (log {})",
                log.display()
            )
        })??
        .with_context(|| format!("{name} exited before it listened (log {})", log.display()))?;
    Ok((
        ChildProcess {
            name: name.to_owned(),
            child,
            pid,
            log,
        },
        first.trim().to_owned(),
    ))
}

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// User + system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kb: u64,
    /// Peak resident memory so far (`VmHWM`).
    pub peak_rss_kb: u64,
    pub at: Instant,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (use `"self"` for this process).
pub fn sample(pid: &str) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    Ok(ProcSample {
        cpu_ticks: stat_cpu_ticks(&stat).context("unreadable /proc stat")?,
        rss_kb: status_kb(&status, "VmRSS").unwrap_or(0),
        peak_rss_kb: status_kb(&status, "VmHWM").unwrap_or(0),
        at: Instant::now(),
    })
}

/// CPU and memory of a process over a span of the run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Percent of one core (200 is both cores of this machine).
    pub cpu_percent: f64,
    /// Resident memory at the end of the span.
    pub rss_mb: f64,
    /// Peak resident memory since the process started (`VmHWM`).
    pub peak_rss_mb: f64,
}

/// The usage between two samples of one process.
pub fn usage(before: &ProcSample, after: &ProcSample, ticks_per_sec: u64) -> Usage {
    Usage {
        cpu_percent: super::stats::cpu_percent(
            after.cpu_ticks.saturating_sub(before.cpu_ticks),
            ticks_per_sec,
            after.at.saturating_duration_since(before.at),
        ),
        rss_mb: after.rss_kb as f64 / 1024.0,
        peak_rss_mb: after.peak_rss_kb as f64 / 1024.0,
    }
}

/// Processes watched over a span: sampled at the start, read as usage at the end.
#[derive(Debug, Clone)]
pub struct Watch {
    start: Vec<(String, String, Option<ProcSample>)>,
}

impl Watch {
    /// Samples each `(name, pid)` now (a pid of `self` is this process).
    pub fn start(processes: &[(String, String)]) -> Self {
        Self {
            start: processes
                .iter()
                .map(|(name, pid)| (name.clone(), pid.clone(), sample(pid).ok()))
                .collect(),
        }
    }

    /// Each process's usage since [`Watch::start`].
    pub fn finish(&self, ticks_per_sec: u64) -> Vec<(String, Option<Usage>)> {
        self.start
            .iter()
            .map(|(name, pid, before)| {
                let after = sample(pid).ok();
                (
                    name.clone(),
                    before
                        .as_ref()
                        .zip(after.as_ref())
                        .map(|(b, a)| usage(b, a, ticks_per_sec)),
                )
            })
            .collect()
    }
}

/// The broker and Redis servers of this machine, to watch beside the roles: RabbitMQ's
/// `beam.smp` (the largest, when test nodes run too) and the `redis-server` serving `port`.
pub fn servers(redis_port: u16) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(pid) = find_process("beam.smp", None) {
        out.push(("broker (RabbitMQ)".to_owned(), pid.to_string()));
    }
    if let Some(pid) = find_process("redis-server", Some(&format!(":{redis_port}"))) {
        out.push(("Redis".to_owned(), pid.to_string()));
    }
    out
}

/// A process named `comm` whose command line contains `needle` (if given); among several,
/// the one with the most resident memory.
pub fn find_process(comm: &str, needle: Option<&str>) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter(|pid| {
            needle.is_none_or(|n| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(n))
            })
        })
        .max_by_key(|pid| sample(&pid.to_string()).map_or(0, |s| s.rss_kb))
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in kB.
pub fn status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that cannot be asked).
pub fn ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 37 0 0 20 0 9 0 12345 123456789 2048 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(187));
        assert_eq!(stat_cpu_ticks("1 (x) S 1"), None);
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_lines_in_kilobytes() {
        let status = "Name:\tswitchboard\nVmHWM:\t   81234 kB\nVmRSS:\t   65000 kB\n";
        assert_eq!(status_kb(status, "VmRSS"), Some(65000));
        assert_eq!(status_kb(status, "VmHWM"), Some(81234));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample("self").unwrap();
        assert!(s.rss_kb > 0 && s.peak_rss_kb >= s.rss_kb);
        assert!(ticks_per_sec() > 0);
    }
}
