//! Leader election on a coordination.k8s.io Lease: only the leader runs the controllers (and
//! so only the leader refreshes). A leader that lost its lease without noticing is still
//! fenced by the per-connection claim on the state Secret.

use crate::context::Context;
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Lease timing: a follower takes over at most `duration` + `grace` after a leader dies.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Lease duration in seconds.
    pub duration_secs: u64,
    /// Renewal happens this many seconds before the lease runs out.
    pub grace_secs: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            namespace: "exact-operator-system".into(),
            name: "exact-operator-leader".into(),
            duration_secs: 15,
            grace_secs: 5,
        }
    }
}

/// Runs the controllers whenever this process holds the lease, until `shutdown` resolves.
/// Losing the lease stops the controllers gracefully (refreshes in flight finish).
pub async fn run_as_leader(
    ctx: Arc<Context>,
    lease: LeaseSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_change: impl Fn(bool) + Send + 'static,
) -> anyhow::Result<()> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&ctx.identity)
        .with_duration(lease.duration_secs)
        .with_grace(lease.grace_secs)
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "leader election on Lease {}/{}: {e}",
                lease.namespace,
                lease.name
            )
        })?;
    let (mut leader, task) = manager.watch().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    loop {
        // Wait to become leader (or to be told to stop).
        let mut stop = stop_rx.clone();
        tokio::select! {
            r = leader.wait_for(|l| *l) => { if r.is_err() { break; } }
            _ = stop.wait_for(|s| *s) => break,
        }
        tracing::info!(identity = %ctx.identity, "became leader: starting controllers");
        on_change(true);
        let mut lost = leader.clone();
        let mut stop = stop_rx.clone();
        let until = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => tracing::warn!("lost leadership: stopping controllers"),
                _ = stop.wait_for(|s| *s) => {},
            }
        };
        crate::controller::run(ctx.clone(), until).await;
        on_change(false);
        if *stop_rx.borrow() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Closing the channel releases the lease so a follower takes over at once.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!("lease released"),
        _ => tracing::warn!("lease not released cleanly; a follower takes over when it expires"),
    }
    Ok(())
}
