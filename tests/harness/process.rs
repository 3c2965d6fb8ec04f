//! The operator as a separate process (the real binary), for the tests that need a process
//! of their own (`tests/ha.rs`, `tests/chaos.rs`: signals, leader election between
//! processes) and for the scale benchmark (`src/bin/exact-bench`, which includes this file
//! with `#[path]`). One home for spawning it, signalling it, waiting for its exit and reading
//! its /metrics; also the nearest-rank percentile both report with.
//!
//! It lives here and not in the operator library because it is test tooling: the shipped
//! library should not carry (or document) process-spawning helpers. So this file depends on
//! nothing but the crates every target of the package has (`anyhow`, `reqwest`, `tokio`),
//! never on `crate::support` or `crate::harness`.
#![allow(dead_code)] // each includer uses a different subset

use anyhow::Context as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a graceful stop (`stop`, or drop with `stop_gracefully_on_drop`) waits after
/// SIGTERM before it SIGKILLs.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(20);

/// How an operator process is started: `--namespace` plus whatever the caller adds.
#[derive(Clone, Debug)]
pub struct OperatorCommand {
    binary: PathBuf,
    kubeconfig: PathBuf,
    pod: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    log: Option<PathBuf>,
    stdout_to_log: bool,
    metrics_addr: Option<String>,
    graceful_drop: bool,
}

impl OperatorCommand {
    /// `binary --namespace namespace` with `KUBECONFIG=kubeconfig`.
    pub fn new(
        binary: impl Into<PathBuf>,
        kubeconfig: impl Into<PathBuf>,
        namespace: &str,
    ) -> Self {
        OperatorCommand {
            binary: binary.into(),
            kubeconfig: kubeconfig.into(),
            pod: String::new(),
            args: vec!["--namespace".into(), namespace.into()],
            env: Vec::new(),
            env_remove: Vec::new(),
            log: None,
            stdout_to_log: false,
            metrics_addr: None,
            graceful_drop: false,
        }
    }

    /// `POD_NAME`: the process's identity (claims, Lease holder) is `<pod>-<8 hex>`.
    pub fn pod(mut self, pod: &str) -> Self {
        self.pod = pod.to_string();
        self.env("POD_NAME", pod)
    }

    /// Extra arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An argument only when `on`.
    pub fn arg_if(self, on: bool, arg: &str) -> Self {
        if on {
            self.args([arg])
        } else {
            self
        }
    }

    /// `--metrics-addr addr` (`127.0.0.1:0` when the caller never reads it).
    pub fn metrics_addr(mut self, addr: &str) -> Self {
        self.metrics_addr = Some(addr.to_string());
        self.args(["--metrics-addr", addr])
    }

    /// An environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an inherited environment variable (e.g. `RUST_LOG`, when `--log-level`
    /// should decide).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Writes stderr (the operator's log lines) to `path`; else stderr is discarded.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Also writes stdout to the log file (the benchmark keeps everything the process says).
    pub fn stdout_to_log(mut self) -> Self {
        self.stdout_to_log = true;
        self
    }

    /// Dropping the process SIGTERMs it and waits (up to [`GRACEFUL_STOP`]) instead of
    /// SIGKILLing it, so a benchmark run ends with the operator's own shutdown.
    pub fn stop_gracefully_on_drop(mut self) -> Self {
        self.graceful_drop = true;
        self
    }

    /// Starts the process.
    pub fn spawn(&self) -> anyhow::Result<OperatorProcess> {
        let mut cmd = Command::new(&self.binary);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        if let Some(log) = &self.log {
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
            if self.stdout_to_log {
                cmd.stdout(file.try_clone()?);
            }
            cmd.stderr(file);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        Ok(OperatorProcess {
            child,
            pod: self.pod.clone(),
            log: self.log.clone(),
            metrics_addr: self.metrics_addr.clone(),
            graceful_drop: self.graceful_drop,
        })
    }
}

/// One running (or exited) operator process. Dropping it SIGKILLs it (or stops it
/// gracefully, see [`OperatorCommand::stop_gracefully_on_drop`]).
pub struct OperatorProcess {
    child: Child,
    /// `POD_NAME` of the process (empty when not set).
    pub pod: String,
    /// The file with its stderr, when it has one.
    pub log: Option<PathBuf>,
    metrics_addr: Option<String>,
    graceful_drop: bool,
}

impl OperatorProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether `identity` (a claim holder or Lease holder) is this process.
    pub fn is(&self, identity: &str) -> bool {
        identity
            .strip_prefix(&self.pod)
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// The URL of its /metrics, when started with [`OperatorCommand::metrics_addr`].
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_addr
            .as_ref()
            .map(|addr| format!("http://{addr}/metrics"))
    }

    /// Sends `kill -SIG` (`"TERM"`, `"KILL"`, ...) without waiting.
    pub fn signal(&self, sig: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{sig} {} failed", self.child.id()))
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (polling, without blocking the runtime) up to `timeout` for the
    /// exit. Returns the exit status and how long the exit took.
    pub async fn sigterm(&mut self, timeout: Duration) -> Result<(ExitStatus, Duration), String> {
        self.signal("TERM")?;
        let sent = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok((status, sent.elapsed()));
            }
            if sent.elapsed() > timeout {
                return Err(format!(
                    "{} still running {timeout:?} after SIGTERM",
                    self.pod
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop from synchronous code: SIGTERM, wait up to [`GRACEFUL_STOP`], then
    /// SIGKILL.
    pub fn stop(&mut self) {
        let _ = self.signal("TERM");
        let sent = Instant::now();
        while sent.elapsed() < GRACEFUL_STOP {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.sigkill();
    }

    /// Whether the process still runs (reaps it when it has exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether it still runs, read from /proc without reaping it (a zombie counts as gone),
    /// so a caller holding `&self` can check while its pid stays valid for /proc readings.
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    }

    /// A counter or gauge from its /metrics (first sample of `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(self.metrics_url()?)
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        first_sample(&text, name)
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if self.graceful_drop {
            if matches!(self.child.try_wait(), Ok(None)) {
                self.stop();
            }
        } else {
            self.sigkill();
        }
    }
}

/// The value of the first sample of metric `name` in a Prometheus text exposition.
pub fn first_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback address that was free a moment ago (for `--oauth-addr` or `--metrics-addr`,
/// whose URL must be known before the process starts).
pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Nearest-rank percentile of sorted values (`p` in 0..=1); the default (zero) when empty.
/// Used for durations (tests) and plain numbers (the benchmark's report).
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
