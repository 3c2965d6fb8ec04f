//! The operator as a separate process (the real binary, the operator's RBAC identity), with
//! its stderr (JSON log lines) in a file, and the signals the chaos scenarios send it.

use crate::support;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How every operator process of one scenario is started.
#[derive(Clone, Debug)]
pub struct OperatorOpts {
    /// Watched namespace, also the namespace of the Lease and the OAuth state key.
    pub namespace: String,
    /// Run with `--leader-elect`.
    pub leader_elect: bool,
    /// `RUST_LOG` of the process.
    pub rust_log: String,
    /// Serve the OAuth flow on this address (public URL `http://<addr>`).
    pub oauth: Option<SocketAddr>,
    /// Folder of the log files (`<pod>.log`).
    pub log_dir: PathBuf,
}

/// One running (or exited) operator process. Dropping it SIGKILLs it.
pub struct OperatorProcess {
    child: Child,
    /// `POD_NAME` of the process: its identity (claims, Lease holder) is `<pod>-<8 hex>`.
    pub pod: String,
    /// The file with its stderr.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `exact-operator` with `POD_NAME=pod`.
    pub fn spawn(opts: &OperatorOpts, pod: &str) -> OperatorProcess {
        std::fs::create_dir_all(&opts.log_dir).expect("log dir");
        let log = opts.log_dir.join(format!("{pod}.log"));
        let stderr = File::create(&log).expect("operator log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exact-operator"));
        cmd.env("KUBECONFIG", support::operator_kubeconfig_path())
            .env("POD_NAME", pod)
            .env("RUST_LOG", &opts.rust_log)
            .args(["--namespace", &opts.namespace])
            .args(["--operator-namespace", &opts.namespace])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--max-errors-per-hour", "1000"])
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        if opts.leader_elect {
            cmd.arg("--leader-elect");
        }
        if let Some(addr) = opts.oauth {
            cmd.args(["--oauth-addr", &addr.to_string()])
                .args(["--public-url", &format!("http://{addr}")]);
        }
        let child = cmd.spawn().expect("spawn exact-operator");
        OperatorProcess {
            child,
            pod: pod.to_string(),
            log,
        }
    }

    /// Whether `identity` (a claim holder or Lease holder) is this process.
    pub fn is(&self, identity: &str) -> bool {
        identity
            .strip_prefix(&self.pod)
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// SIGKILL, and wait until it is gone.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (polling, without blocking the runtime) up to `timeout` for the
    /// exit. Returns the exit status and how long the exit took.
    pub async fn sigterm(&mut self, timeout: Duration) -> Result<(ExitStatus, Duration), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM {} failed", self.child.id()));
        }
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

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A loopback address that was free a moment ago (for `--oauth-addr`, whose public URL must
/// be known before the process starts).
pub fn free_loopback_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
