//! Test support for integration tests against a real Kubernetes API server.
//!
//! Include it from an integration test file with `mod support;`.
//!
//! # What you get
//!
//! One control plane (etcd + kube-apiserver, started by `scripts/testenv`) per test
//! binary, started lazily by the first helper that needs it and shared by every test in
//! that binary. Before the first test gets a client:
//!
//! - every CRD in `crds/*.yaml` is installed with server-side apply and is Established
//!   and actually served (a list call succeeds) — see [`crd_names`];
//! - `deploy/rbac.yaml` is applied, and a token for the ServiceAccount
//!   `exact-operator-system/exact-operator` is obtained through the TokenRequest API —
//!   see [`operator_client`] and [`operator_kubeconfig_path`]. The operator identity has
//!   exactly the rights in `deploy/rbac.yaml`, so a missing RBAC verb fails the tests.
//!
//! Each `#[tokio::test]` has its own runtime, so the shared state holds only paths and
//! names; [`admin_client`] and [`operator_client`] build a fresh [`kube::Client`] per call.
//! Give each test its own namespace with [`fresh_namespace`].
//!
//! # Limits of the control plane
//!
//! It has **no controller-manager and no kubelet**: no pods ever run, ServiceAccount token
//! Secrets are never populated, namespaces are never finalized (deleted namespaces stay
//! `Terminating`, so tests never delete them), and **owner-reference garbage collection does
//! not happen**: deleting an owner leaves its dependents in place. Tests therefore assert that
//! the owner references are set correctly instead of waiting for dependents to disappear.
//! The API server is kube-apiserver v1.20.2 unless `KUBEBUILDER_ASSETS` points elsewhere:
//! APIs newer than 1.20 (e.g. CEL validation rules in CRDs) are not available.
//!
//! # Lifetime: no orphans
//!
//! The control plane is started with `scripts/testenv start DIR --watch-pid <test pid>`.
//! A detached watchdog stops etcd and kube-apiserver within about a second after the test
//! binary exits — normally, by panic, or by SIGKILL — and deletes the etcd data. DIR is
//! `target/tmp/testenv/<test binary>-<pid>/` and keeps the logs (`kube-apiserver.log`,
//! `etcd.log`) for post-mortems; such folders are pruned after an hour.
//!
//! # Binaries
//!
//! `scripts/testenv assets` provides `etcd` and `kube-apiserver`: from `$KUBEBUILDER_ASSETS`
//! when set, else from the per-user cache
//! `${XDG_CACHE_HOME:-~/.cache}/exact-operator/testenv/v1.20.2/`, which the first run fills
//! by building kube-apiserver from Debian source (5-10 minutes, once).
//!
//! # With nodes
//!
//! Tests that need pods call [`node::node_env`]: a separate cluster with
//! kube-controller-manager, kube-scheduler and two real nodes (containerd + kubelet), the
//! operator image imported, same watchdog, state in `$TMPDIR/exact-operator-node/<pid>/`
//! (short enough for unix socket paths). Test binaries that never call it never start it.
//!
//! # Using an existing cluster
//!
//! Set `EXACT_TEST_USE_EXISTING_CLUSTER=1` to use the cluster of the current kubeconfig
//! (`$KUBECONFIG`, which must then name a single file, or `~/.kube/config`) instead of
//! starting one. The tests then install the CRDs and `deploy/rbac.yaml` into that cluster
//! and create namespaces named `t-…` that they never delete. Use a throwaway cluster.
#![allow(dead_code)] // every test binary uses a different subset of these helpers

mod control_plane;
mod k8s;
pub mod node;
mod operator_identity;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use kube::Client;

#[allow(unused_imports)] // each test binary uses a different subset of these helpers
pub use k8s::{apply_yaml, fresh_namespace, install_crds, wait_for};

/// Field manager used for every server-side apply done by these helpers.
pub const FIELD_MANAGER: &str = "exact-operator-tests";
/// Namespace the operator's ServiceAccount lives in (see `deploy/rbac.yaml`).
pub const OPERATOR_NAMESPACE: &str = "exact-operator-system";
/// Name of the operator's ServiceAccount, ClusterRole and ClusterRoleBinding.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "exact-operator";
/// Env var that opts into using the current kubeconfig instead of starting a control plane.
pub const USE_EXISTING_CLUSTER_ENV: &str = "EXACT_TEST_USE_EXISTING_CLUSTER";

/// How long the one-time setup waits for CRDs and RBAC to take effect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared, runtime-independent state of one test binary's environment.
struct TestEnv {
    /// Admin kubeconfig (testenv's `system:masters` token, or the existing cluster's).
    kubeconfig: PathBuf,
    /// Kubeconfig with a token of the operator's ServiceAccount.
    operator_kubeconfig: PathBuf,
    /// Names of the CRDs installed from `crds/*.yaml`.
    crd_names: Vec<String>,
}

static ENV: OnceLock<Result<TestEnv, String>> = OnceLock::new();

/// The environment, set up on first use. A failed setup is remembered, so every test fails
/// fast with the same message instead of retrying a slow start.
fn env() -> &'static TestEnv {
    let env = ENV.get_or_init(|| {
        // Own thread, own runtime: the caller may be inside a test's runtime, and nothing
        // created during setup may outlive that runtime anyway.
        std::thread::spawn(setup)
            .join()
            .unwrap_or_else(|panic| Err(panic_message(&*panic)))
    });
    match env {
        Ok(env) => env,
        Err(message) => panic!("test environment setup failed: {message}"),
    }
}

fn setup() -> Result<TestEnv, String> {
    let state = if use_existing_cluster() {
        control_plane::existing_cluster()?
    } else {
        control_plane::start()?
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    runtime.block_on(async {
        let admin = k8s::client_from_kubeconfig(&state.kubeconfig, None).await;
        let crd_names = k8s::install_crd_dir(&admin, &repo_path("crds")).await;
        let operator_kubeconfig = state.dir.join("operator.kubeconfig");
        operator_identity::set_up(&admin, &state.kubeconfig, &operator_kubeconfig).await;
        Ok(TestEnv {
            kubeconfig: state.kubeconfig,
            operator_kubeconfig,
            crd_names,
        })
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "setup panicked".to_string())
}

fn use_existing_cluster() -> bool {
    std::env::var(USE_EXISTING_CLUSTER_ENV).is_ok_and(|v| v == "1" || v == "true")
}

/// A path inside the repository (the root package's folder).
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Path of the admin kubeconfig, e.g. to spawn the operator binary with `KUBECONFIG` set.
/// Starts the control plane if it is not running yet.
pub fn kubeconfig_path() -> PathBuf {
    env().kubeconfig.clone()
}

/// Path of a kubeconfig that authenticates as the operator's ServiceAccount (token valid
/// for at least an hour), to spawn the operator binary with exactly its production rights.
pub fn operator_kubeconfig_path() -> PathBuf {
    env().operator_kubeconfig.clone()
}

/// Names of the CRDs installed from `crds/*.yaml` (empty when that folder has none).
pub fn crd_names() -> Vec<String> {
    env().crd_names.clone()
}

/// A new client with cluster-admin rights (`system:masters`), default namespace `default`.
pub async fn admin_client() -> Client {
    k8s::client_from_kubeconfig(&env().kubeconfig, None).await
}

/// A new client authenticated as the operator's ServiceAccount
/// (`exact-operator-system/exact-operator`), bound by `deploy/rbac.yaml` only, with
/// `namespace` as its default namespace.
pub async fn operator_client(namespace: &str) -> Client {
    k8s::client_from_kubeconfig(&env().operator_kubeconfig, Some(namespace)).await
}

/// The `scripts/testenv` state folder of this test binary's control plane (it holds
/// `kube-apiserver.pid`, `env` and the logs; pass it to `scripts/testenv apiserver-stop`),
/// or `None` when the tests use an existing cluster. Starts the control plane if needed.
pub fn testenv_dir() -> Option<PathBuf> {
    if use_existing_cluster() {
        return None;
    }
    env()
        .operator_kubeconfig
        .parent()
        .map(|dir| dir.to_path_buf())
}
