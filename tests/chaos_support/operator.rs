//! The operator processes of the chaos scenarios: how each is started (the real binary, the
//! operator's RBAC identity, JSON log lines on stderr in a file). Signals and waiting for
//! exits are the shared `harness::process`.

use crate::harness::process::{OperatorCommand, OperatorProcess};
use crate::support;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::harness::process::free_loopback_addr;

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

impl OperatorOpts {
    /// Starts `exact-operator` with `POD_NAME=pod`, its stderr in `<log_dir>/<pod>.log`,
    /// and `--journal-dir journal` when given. Dropping the process SIGKILLs it.
    pub fn spawn(&self, pod: &str, journal: Option<&Path>) -> OperatorProcess {
        let mut cmd = OperatorCommand::new(
            env!("CARGO_BIN_EXE_exact-operator"),
            support::operator_kubeconfig_path(),
            &self.namespace,
        )
        .pod(pod)
        .env("RUST_LOG", &self.rust_log)
        .args(["--operator-namespace", &self.namespace])
        .metrics_addr("127.0.0.1:0")
        .args(["--max-errors-per-hour", "1000"])
        .args(["--log-format", "json"])
        .arg_if(self.leader_elect, "--leader-elect")
        .log(self.log_dir.join(format!("{pod}.log")));
        if let Some(dir) = journal {
            cmd = cmd.args(["--journal-dir".to_string(), dir.display().to_string()]);
        }
        if let Some(addr) = self.oauth {
            cmd = cmd
                .args(["--oauth-addr", &addr.to_string()])
                .args(["--public-url", &format!("http://{addr}")]);
        }
        cmd.spawn().expect("spawn exact-operator")
    }
}
