//! Shards across replicas: connections (and webhook subscriptions, and clients for their
//! status writes) are spread over N shards by a stable hash of their UID; each shard is a
//! Lease `exact-operator-shard-<i>` in the operator namespace, held by one replica. Every
//! replica runs the controllers, but a reconcile of an object whose shard it does not hold
//! returns at once, without any API call. Replicas take a fair share each (ceil(N /
//! members), members counted from membership Leases `exact-operator-member-<replica>`) and
//! take over a dead replica's shards once its Leases run out.
//!
//! The per-connection claim on the state Secret still fences every token call: two
//! replicas that both think they hold a shard (a renewal that lost a race, clocks apart, a
//! rollout changing N) waste work but never spend a refresh token twice.
//!
//! `--leader-elect` is the one-shard special case (one Lease, everything behind it).

mod lease;
pub mod ownership;
pub mod plan;

pub use ownership::*;

use crate::context::Context;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// The holder identity for shard Leases: `--shard-identity`, else POD_NAME (no random
/// suffix: a restarted container of the same pod resumes its shards at once), else
/// HOSTNAME, else the process identity.
pub fn holder_identity(explicit: Option<&str>, process_identity: &str) -> String {
    explicit
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| process_identity.to_string())
}

/// Name of the membership Lease of `identity` (a DNS subdomain of at most 253 characters).
pub fn member_lease_name(identity: &str) -> String {
    let clean: String = identity
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{MEMBER_LEASE_PREFIX}{clean}");
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// Runs the controllers in this replica while keeping its share of the shard Leases;
/// `shutdown` stops the controllers (refreshes in flight finish), then every held Lease is
/// released (holder cleared) so the other replicas take over at once.
pub async fn run_sharded(
    ctx: Arc<Context>,
    settings: ShardSettings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let ownership = ctx
        .shards
        .clone()
        .ok_or_else(|| anyhow::anyhow!("sharding: the context has no shard ownership"))?;
    let mut keeper = lease::Keeper::new(ctx.clone(), ownership, settings.clone());
    keeper.join().await;
    let controllers = tokio::spawn(crate::controller::run(ctx.clone(), shutdown));
    tokio::pin!(controllers);
    tracing::info!(shards = settings.shards, identity = %settings.identity, "sharding: taking a fair share of the shard Leases");
    loop {
        let started = Instant::now();
        if tokio::time::timeout(settings.tick, keeper.tick())
            .await
            .is_err()
        {
            tracing::warn!("sharding: a Lease tick took longer than the tick; trying again");
        }
        let next = started + settings.tick;
        tokio::select! {
            _ = &mut controllers => break,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
    keeper.release_all().await;
    Ok(())
}

/// The stored connections that belong to `shards`.
fn connections_in(
    ctx: &Context,
    ownership: &Ownership,
    shards: &[u32],
) -> Vec<Arc<crate::crd::ExactConnection>> {
    let mut conns = ctx.caches.connections();
    conns.retain(|c| {
        c.metadata
            .uid
            .as_deref()
            .is_some_and(|uid| shards.contains(&shard_of(uid, ownership.shards())))
    });
    conns
}

/// Has every stored connection of the newly held `shards` reconciled at once (their
/// reconciles were skipped while another replica held them).
fn reconcile_shards(ctx: &Context, ownership: &Ownership, shards: &[u32]) {
    if shards.is_empty() {
        return;
    }
    for conn in connections_in(ctx, ownership, shards) {
        ctx.caches.reconcile_soon(ObjectRef::from_obj(&*conn));
    }
}

/// Drops the per-connection series of shards this replica no longer works on: the replica
/// that holds them now exports them, and a stale expiry here would fire alerts.
fn forget_shards(ctx: &Context, ownership: &Ownership, shards: &[u32]) {
    if shards.is_empty() {
        return;
    }
    for conn in connections_in(ctx, ownership, shards) {
        ctx.metrics
            .forget_connection(&conn.namespace().unwrap_or_default(), &conn.name_any());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn the_hash_is_stable_and_spreads() {
        // FNV-1a 64 reference values: a change here would move every connection.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let uid = "6f1c9a2e-0b7d-4c1e-9a55-3b2f7d8e1c40";
        assert_eq!(shard_of(uid, 8), shard_of(uid, 8));
        let mut per = [0u32; 8];
        for i in 0..8000 {
            per[shard_of(&format!("uid-{i}"), 8) as usize] += 1;
        }
        assert!(per.iter().all(|n| (800..1200).contains(n)), "{per:?}");
        assert_eq!(shard_of(uid, 1), 0);
        assert_eq!(shard_of(uid, 0), 0);
    }

    #[test]
    fn ownership_follows_held_leases_and_their_deadline() {
        let o = Ownership::new(4);
        let uid = "some-uid";
        let s = shard_of(uid, 4);
        assert!(!o.owns_uid(uid));
        o.hold(s, Instant::now() + Duration::from_secs(10));
        assert!(o.owns_uid(uid));
        assert_eq!(o.held(), vec![s]);
        o.hold(s, Instant::now() - Duration::from_millis(1));
        assert!(
            !o.owns_uid(uid),
            "a lease run out by the local clock is not worked on"
        );
        assert!(o.drop_shard(s));
        assert!(!o.drop_shard(s));
    }

    #[test]
    fn member_lease_names_are_valid() {
        assert_eq!(member_lease_name("op-a"), "exact-operator-member-op-a");
        assert_eq!(member_lease_name("Op_A"), "exact-operator-member-op-a");
        assert!(member_lease_name(&"x".repeat(400)).len() <= 253);
    }
}
