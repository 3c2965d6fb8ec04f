//! The watch loop: one Secret, watched with `fieldSelector=metadata.name=NAME` (so RBAC may
//! restrict the agent to that Secret by `resourceNames`), re-watched with the kube-runtime
//! default backoff after any error, each change written to the token directory at once.

use super::files::TokenDir;
use super::state::{Shared, Snapshot};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

/// Server-side watch timeout. The watcher re-watches (from the last resourceVersion) when it
/// ends, and treats a watch that stays silent for this long plus 5 s as dead, so a connection
/// that died without a close is replaced within about a minute.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// How soon a failed file write is retried when no new event arrives.
const FILE_RETRY: Duration = Duration::from_secs(1);

/// Watches `name` through `api` until `shutdown` resolves, mirroring it into `dir` and
/// `shared`. Only returns early if the watch stream ends, which the backoff-wrapped watcher
/// never does.
pub async fn run(
    api: Api<Secret>,
    name: &str,
    dir: TokenDir,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(WATCH_TIMEOUT_SECS);
    let mut events = pin!(watcher(api, config).default_backoff());
    let mut shutdown = pin!(shutdown);
    let mut retry_files = false;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            event = events.next() => match event {
                Some(Ok(event)) => {
                    handle(event, name, &dir, &shared).await;
                    retry_files = shared.lock().files_error.is_some();
                }
                Some(Err(e)) => {
                    tracing::warn!(secret = %shared.secret, error = %e,
                        "watch failed: re-watching with backoff, keeping the last token");
                    shared.lock().watch_error = Some(e.to_string());
                }
                None => anyhow::bail!("the watch of Secret {} ended unexpectedly", shared.secret),
            },
            () = tokio::time::sleep(FILE_RETRY), if retry_files => {
                write_files(&dir, &shared).await;
                retry_files = shared.lock().files_error.is_some();
            }
        }
    }
}

/// Applies one watch event.
async fn handle(event: Event<Secret>, name: &str, dir: &TokenDir, shared: &Shared) {
    match event {
        Event::Init => {
            let mut s = shared.lock();
            s.watch_error = None;
            // A (re)list follows: the Secret is present only if it is listed.
            s.secret_present = false;
        }
        Event::InitDone => {
            let mut s = shared.lock();
            s.watch_error = None;
            if !s.secret_present {
                tracing::info!(secret = %shared.secret,
                    "Secret not found: waiting for it (keeping the last token, if any)");
            }
        }
        Event::Delete(_) => {
            shared.lock().secret_present = false;
            tracing::warn!(secret = %shared.secret,
                "Secret deleted: keeping the last token on disk and in memory");
        }
        Event::Apply(secret) | Event::InitApply(secret) => {
            // The field selector already guarantees this; be strict anyway.
            if secret.metadata.name.as_deref() == Some(name) {
                apply(&secret, dir, shared).await;
            }
        }
    }
}

/// Takes a new Secret version: keeps it in memory and writes the files when it holds an
/// access token.
async fn apply(secret: &Secret, dir: &TokenDir, shared: &Shared) {
    let (snapshot, skipped) = Snapshot::from_secret(secret);
    let rv = secret.metadata.resource_version.clone().unwrap_or_default();
    {
        let mut s = shared.lock();
        s.secret_present = true;
        s.secret_seen = true;
        s.watch_error = None;
    }
    if !skipped.is_empty() {
        tracing::warn!(secret = %shared.secret, keys = ?skipped,
            "not writing these keys (refresh tokens are never written)");
    }
    let Some(snapshot) = snapshot else {
        tracing::warn!(secret = %shared.secret, resource_version = %rv,
            "Secret has no access_token: keeping the last token");
        return;
    };
    let expires_at = snapshot.get("expires_at").unwrap_or("").to_string();
    {
        let mut s = shared.lock();
        let same = s.token.as_ref().is_some_and(|t| t.same_values(&snapshot));
        s.token = Some(snapshot);
        if same && s.files_error.is_none() {
            tracing::debug!(secret = %shared.secret, resource_version = %rv, "no change");
            return;
        }
    }
    tracing::info!(secret = %shared.secret, resource_version = %rv, expires_at = %expires_at,
        "new token received");
    write_files(dir, shared).await
}

/// Writes the in-memory token to the directory; a failure is kept in `files_error`.
async fn write_files(dir: &TokenDir, shared: &Shared) {
    let Some(entries) = shared.lock().token.as_ref().map(Snapshot::file_entries) else {
        return;
    };
    let d = dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        d.write_all(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    })
    .await;
    let outcome = match result {
        Ok(Ok(changed)) => Ok(changed),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("file writer task failed: {e}")),
    };
    let mut s = shared.lock();
    match outcome {
        Ok(changed) => {
            if s.files_error.take().is_some() {
                tracing::info!(dir = %dir.path().display(), "token files written again");
            }
            if !changed.is_empty() {
                tracing::info!(dir = %dir.path().display(), files = ?changed, "token files updated");
            }
        }
        Err(e) => {
            tracing::error!(dir = %dir.path().display(), error = %e,
                "cannot write token files: retrying every second");
            s.files_error = Some(e);
        }
    }
}
