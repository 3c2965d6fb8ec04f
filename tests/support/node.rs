//! "With node" mode: a control plane plus kube-controller-manager, kube-scheduler and two
//! real nodes (containerd + kubelet, `scripts/testenv start DIR --nodes 2`), for tests that
//! need pods. Started lazily by the first call of [`node_env`], once per test binary, and
//! stopped by the same watchdog as the plain control plane (within about a second after the
//! test binary exits, however it exits; the host changes are undone then too). State and
//! logs: `$TMPDIR/exact-operator-node/<pid>/` (not under `target/`: unix socket paths must
//! stay under 104 bytes).
//!
//! Only test binaries that call [`node_env`] pay for it (about 30 s to start, plus a
//! one-time build of the node binaries of about 15 minutes on 2 cores); the default control
//! plane of [`super::admin_client`] stays without node and as fast as before.
//!
//! The operator image `localhost/exact-operator:test` is the release binary
//! (`cargo build --release --bin exact-operator`, run here so the image matches the source)
//! plus the shared libraries it links, built offline and imported into both nodes
//! (`scripts/testenv image`). Pods cannot reach the API server through the `kubernetes`
//! Service (no kube-proxy): run them with hostNetwork and [`NodeEnv::api_env`].
//!
//! Needs root and cgroup v1, like the node itself.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kube::Client;

/// Image reference of the operator inside the nodes (imagePullPolicy Never).
pub const OPERATOR_IMAGE_REPOSITORY: &str = "localhost/exact-operator";
/// Tag of [`OPERATOR_IMAGE_REPOSITORY`].
pub const OPERATOR_IMAGE_TAG: &str = "test";
/// Test-workload image in the nodes: Debian's static busybox (sh, cat, wget, sleep).
pub const BUSYBOX_IMAGE: &str = "localhost/testenv-busybox:1.35";

/// A running cluster with nodes.
pub struct NodeEnv {
    /// `scripts/testenv` state folder (logs: `kube-apiserver.log`, `kcm.log`,
    /// `node-<i>/kubelet.log`, ...).
    pub dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Port of the kube-apiserver on 127.0.0.1.
    pub api_port: u16,
}

impl NodeEnv {
    /// Environment variables that let a hostNetwork container reach the API server with
    /// its in-cluster configuration, as container `env` entries.
    pub fn api_env(&self) -> serde_json::Value {
        serde_json::json!([
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": self.api_port.to_string()},
        ])
    }

    /// A new cluster-admin client.
    pub async fn admin_client(&self) -> Client {
        super::k8s::client_from_kubeconfig(&self.kubeconfig, None).await
    }
}

static NODE: OnceLock<Result<NodeEnv, String>> = OnceLock::new();

/// The cluster with nodes, started on first use; a failed start is remembered so every
/// test fails fast with the same message.
pub fn node_env() -> &'static NodeEnv {
    match NODE.get_or_init(setup) {
        Ok(env) => env,
        Err(message) => panic!("node test environment setup failed: {message}"),
    }
}

fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn setup() -> Result<NodeEnv, String> {
    let started = std::time::Instant::now();
    // Build first: a build is slow, and nothing should wait on it while holding ports.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    run(
        Command::new(&cargo)
            .args(["build", "--release", "--bin", "exact-operator"])
            .current_dir(super::repo_path(".")),
        "cargo build --release --bin exact-operator",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_path("target"));
    let binary = target.join("release/exact-operator");

    // Not under target/: unix socket paths (containerd's, the kubelet's) must stay under
    // 104 bytes, and a checkout can live anywhere. Logs stay there for post-mortems; folders
    // of finished runs are pruned after an hour.
    let root = std::env::temp_dir().join("exact-operator-node");
    super::control_plane::prune_stale(&root);
    let dir = root.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let script = super::repo_path("scripts/testenv");
    eprintln!(
        "support: starting a control plane with two nodes in {} (the first run ever builds \
         the node binaries, about 15 minutes)",
        dir.display()
    );
    run(
        Command::new(&script)
            .arg("start")
            .arg(&dir)
            .args(["--nodes", "2", "--watch-pid"])
            .arg(std::process::id().to_string()),
        "scripts/testenv start --nodes 2",
    )?;
    let env = std::fs::read_to_string(dir.join("env"))
        .map_err(|e| format!("cannot read {}/env: {e}", dir.display()))?;
    let api_port = env
        .lines()
        .find_map(|l| l.strip_prefix("TESTENV_API_PORT="))
        .and_then(|p| p.trim().parse().ok())
        .ok_or("no TESTENV_API_PORT in the testenv env file")?;
    let image = format!("{OPERATOR_IMAGE_REPOSITORY}:{OPERATOR_IMAGE_TAG}");
    run(
        Command::new(&script)
            .arg("image")
            .arg(&dir)
            .arg(&binary)
            .arg(&image),
        "scripts/testenv image",
    )?;
    eprintln!(
        "support: nodes Ready and operator image imported after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(NodeEnv {
        kubeconfig: dir.join("kubeconfig"),
        dir,
        api_port,
    })
}
