//! The operator as a separate process, and resource readings from /proc.

use crate::operator_process::{free_loopback_addr, OperatorCommand, OperatorProcess};
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A binary of this workspace next to the bench's own executable, built when missing
/// (`cargo build [--release] -p PACKAGE --bin NAME`).
pub fn sibling_binary(package: &str, name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("bench executable has no folder")?;
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    eprintln!("bench: {} missing; building it", path.display());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-p", package, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() || !path.is_file() {
        bail!("could not build {name}");
    }
    Ok(path)
}

/// Starts `binary` watching `namespace` with the given kubeconfig, everything it prints in
/// `log`; it stops gracefully (SIGTERM, then SIGKILL after 20 s) on drop. The process
/// handling itself is the tests' (`tests/harness/process.rs`), so the bench measures the
/// operator started the way the HA and chaos tests start it.
/// How each operator process of the bench is started.
pub struct OperatorSettings<'a> {
    /// `POD_NAME` (replicas need distinct ones).
    pub pod: &'a str,
    /// `--log-level`.
    pub log_level: &'a str,
    /// Further arguments (`--operator-arg`).
    pub extra_args: &'a [String],
}

pub fn spawn_operator(
    binary: &Path,
    kubeconfig: &Path,
    namespace: &str,
    settings: &OperatorSettings<'_>,
    log: &Path,
) -> anyhow::Result<OperatorProcess> {
    let metrics = free_loopback_addr()?.to_string();
    OperatorCommand::new(binary, kubeconfig, namespace)
        .pod(settings.pod)
        .metrics_addr(&metrics)
        .args(["--log-level", settings.log_level])
        // Leases (shards, leader) live beside everything else of the run.
        .args(["--operator-namespace", namespace])
        .args(settings.extra_args.iter().cloned())
        // --log-level decides, not whatever RUST_LOG the bench was started with.
        .env_remove("RUST_LOG")
        .log(log)
        .stdout_to_log()
        .stop_gracefully_on_drop()
        .spawn()
}

/// User + system CPU seconds of a process (/proc/PID/stat fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Samples VmRSS once a second; `take` returns the samples since the last `take`.
pub struct RssSampler {
    samples: Arc<Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let (Some(kib), Ok(mut v)) = (status_kib(pid, "VmRSS"), s.lock()) {
                    v.push(kib);
                }
            }
        });
        RssSampler { samples, task }
    }

    /// Samples (KiB) since the last call.
    pub fn take(&self) -> Vec<u64> {
        self.samples
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
