//! Starting the control plane with `scripts/testenv`, or picking up an existing cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// Where a test binary's cluster state lives.
pub(super) struct ControlPlane {
    /// Folder for this test binary's files (testenv state, operator kubeconfig).
    pub dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
}

/// State folders of earlier runs older than this (and no longer running) are deleted.
const PRUNE_AFTER: Duration = Duration::from_secs(3600);

fn state_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("testenv")
}

/// A fresh state folder for this process: `target/tmp/testenv/<binary>-<pid>`.
fn state_dir(prefix: Option<&str>) -> Result<PathBuf, String> {
    let root = state_root();
    prune_stale(&root);
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "tests".to_string());
    let name = format!("{}{binary}-{}", prefix.unwrap_or(""), std::process::id());
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts etcd + kube-apiserver via `scripts/testenv start DIR --watch-pid <our pid>`.
pub(super) fn start() -> Result<ControlPlane, String> {
    let dir = state_dir(None)?;
    let script = super::repo_path("scripts/testenv");
    eprintln!(
        "support: starting kube-apiserver + etcd in {} (the first run ever builds \
         kube-apiserver, 5-10 minutes)",
        dir.display()
    );
    let output = Command::new(&script)
        .arg("start")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} start` failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(ControlPlane {
        kubeconfig: dir.join("kubeconfig"),
        dir,
    })
}

/// Uses the current kubeconfig (`$KUBECONFIG`, a single file, or `~/.kube/config`).
pub(super) fn existing_cluster() -> Result<ControlPlane, String> {
    let kubeconfig = match std::env::var_os("KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".kube/config"))
            .ok_or("neither KUBECONFIG nor HOME is set")?,
    };
    if !kubeconfig.is_file() {
        return Err(format!(
            "{}=1 but kubeconfig {} is not a file (KUBECONFIG must name a single file)",
            super::USE_EXISTING_CLUSTER_ENV,
            kubeconfig.display()
        ));
    }
    Ok(ControlPlane {
        dir: state_dir(Some("existing-"))?,
        kubeconfig,
    })
}

/// Deletes state folders of finished runs: no process pid files left (the watchdog's
/// `stop` removed them) and untouched for [`PRUNE_AFTER`]. Best effort.
pub(super) fn prune_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let running = ["etcd.pid", "kube-apiserver.pid", "watchdog.pid"]
            .iter()
            .any(|pid_file| dir.join(pid_file).exists());
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > PRUNE_AFTER);
        if dir.is_dir() && !running && old {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
