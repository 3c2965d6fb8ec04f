//! The Kubernetes side of sharding: list the set's Leases, carry out the plan's steps as
//! conditional writes (resourceVersion preconditions; a 409 means another replica won and
//! the next tick decides again), and keep `Ownership` in step with what was written.

use super::plan::{self, LeaseView, Rules, Snapshot, Step};
use super::{
    Ownership, ShardSettings, MEMBER_LEASE_PREFIX, SHARD_LEASE_PREFIX, SHARD_SET, SHARD_SET_LABEL,
};
use crate::context::Context;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keeps this replica's share of the shard Leases.
pub(super) struct Keeper {
    ctx: Arc<Context>,
    ownership: Arc<Ownership>,
    settings: ShardSettings,
    api: Api<Lease>,
    member: String,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404)
}

impl Keeper {
    pub(super) fn new(
        ctx: Arc<Context>,
        ownership: Arc<Ownership>,
        settings: ShardSettings,
    ) -> Self {
        let api = Api::namespaced(ctx.client.clone(), &settings.namespace);
        let member = super::member_lease_name(&settings.identity);
        Keeper {
            ctx,
            ownership,
            settings,
            api,
            member,
        }
    }

    fn rules(&self) -> Rules {
        Rules {
            shards: self.settings.shards,
            forget_members_after: (self.settings.duration * 20).max(Duration::from_secs(600)),
        }
    }

    fn lease(&self, name: &str, holder: Option<&str>, base: Option<&Lease>) -> Lease {
        let now = MicroTime(Timestamp::now());
        let mut meta = base
            .map(|l| l.metadata.clone())
            .unwrap_or_else(|| ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            });
        meta.managed_fields = None;
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(SHARD_SET_LABEL.into(), SHARD_SET.into());
        let prev = base.and_then(|l| l.spec.clone()).unwrap_or_default();
        let same_holder = prev.holder_identity.as_deref() == holder && holder.is_some();
        let transitions = prev.lease_transitions.unwrap_or(0);
        Lease {
            metadata: meta,
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(
                    i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: if same_holder {
                    prev.acquire_time
                } else {
                    holder.map(|_| now.clone())
                },
                renew_time: Some(now),
                lease_transitions: Some(if same_holder || holder.is_none() {
                    transitions
                } else {
                    transitions.saturating_add(1)
                }),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Creates or renews this replica's membership Lease.
    async fn renew_membership(&self, listed: Option<&Lease>) {
        let r = match listed {
            Some(l) => {
                let lease = self.lease(&self.member, Some(&self.settings.identity), Some(l));
                self.api
                    .replace(&self.member, &PostParams::default(), &lease)
                    .await
            }
            None => {
                let lease = self.lease(&self.member, Some(&self.settings.identity), None);
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(lease = %self.member, error = %e, "sharding: membership Lease not renewed; retrying next tick");
        }
    }

    /// Announces this replica before its first listing, so replicas starting together see
    /// each other and do not all take every shard first.
    pub(super) async fn join(&self) {
        match self.api.get_opt(&self.member).await {
            Ok(current) => self.renew_membership(current.as_ref()).await,
            Err(e) => tracing::warn!(error = %e, "sharding: reading the membership Lease failed"),
        }
    }

    async fn list(&self) -> Result<Vec<Lease>, kube::Error> {
        let lp = ListParams::default().labels(&format!("{SHARD_SET_LABEL}={SHARD_SET}"));
        Ok(self.api.list(&lp).await?.items)
    }

    /// One tick: renew membership, list, plan, write; newly held shards are reconciled at
    /// once, lost or released ones stop being worked on (released: before the write).
    pub(super) async fn tick(&mut self) {
        // A lost race for a free shard is decided again at once on a fresh listing (a few
        // rounds at most), so a takeover is not delayed by a tick per collision.
        for round in 0..3 {
            if !self.round(round == 0).await {
                break;
            }
        }
    }

    /// One listing and its plan; true when an acquisition lost a race and the share is not
    /// reached yet.
    async fn round(&mut self, renew_membership: bool) -> bool {
        let listed = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "sharding: listing the shard Leases failed; retrying next tick");
                return false;
            }
        };
        let by_name: BTreeMap<String, Lease> = listed
            .into_iter()
            .filter_map(|l| Some((l.metadata.name.clone()?, l)))
            .collect();
        if renew_membership {
            self.renew_membership(by_name.get(&self.member)).await;
        }
        let snapshot = snapshot(&by_name);
        // A shard held here that the listing shows with another holder (or gone) was lost.
        let mut lost = Vec::new();
        for shard in self.ownership.known() {
            let ours = snapshot
                .shards
                .get(&shard)
                .is_some_and(|l| l.holder.as_deref() == Some(self.settings.identity.as_str()));
            if !ours && self.ownership.drop_shard(shard) {
                tracing::warn!(shard, "lost shard {shard}");
                lost.push(shard);
            }
        }
        let now = Timestamp::now();
        let decided = plan::plan(
            &snapshot,
            &self.settings.identity,
            &self.member,
            now,
            &self.rules(),
        );
        let mut acquired = Vec::new();
        let mut raced = false;
        let share = decided.share as usize;
        for step in decided.steps {
            let started = Instant::now();
            let until = started + self.settings.duration;
            match step {
                Step::Renew { shard, version } => {
                    let name = format!("{SHARD_LEASE_PREFIX}{shard}");
                    let base = listed_at(&by_name, &name, &version);
                    match self.write(&name, base, true).await {
                        Ok(()) => {
                            if !self.ownership.holds(shard) {
                                tracing::info!(shard, "acquired shard {shard}");
                                acquired.push(shard);
                            }
                            self.ownership.hold(shard, until);
                        }
                        Err(e) if is_conflict(&e) => {
                            if self.ownership.drop_shard(shard) {
                                tracing::warn!(shard, "lost shard {shard}");
                                lost.push(shard);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(shard, error = %e, "sharding: renewal failed; held until the lease runs out")
                        }
                    }
                }
                Step::Acquire { shard, version } => {
                    let name = format!("{SHARD_LEASE_PREFIX}{shard}");
                    let base = version.and_then(|v| listed_at(&by_name, &name, &v));
                    match self.write(&name, base, true).await {
                        Ok(()) => {
                            self.ownership.hold(shard, until);
                            tracing::info!(shard, "acquired shard {shard}");
                            acquired.push(shard);
                        }
                        Err(e) if is_conflict(&e) => {
                            raced = true;
                            tracing::debug!(
                                shard,
                                "sharding: another replica took shard {shard} first"
                            )
                        }
                        Err(e) => tracing::warn!(shard, error = %e, "sharding: acquiring failed"),
                    }
                }
                Step::Release { shard, version } => {
                    // Stop working on it first; reconciles in flight finish, fenced by the claim.
                    self.ownership.drop_shard(shard);
                    lost.push(shard);
                    let name = format!("{SHARD_LEASE_PREFIX}{shard}");
                    let base = listed_at(&by_name, &name, &version);
                    match self.write(&name, base, false).await {
                        Ok(()) => tracing::info!(shard, "released shard {shard}"),
                        Err(e) => {
                            tracing::warn!(shard, error = %e, "sharding: release not written; the lease runs out instead")
                        }
                    }
                }
                Step::ForgetMember { name, version } => {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            resource_version: Some(version),
                            uid: None,
                        }),
                        ..DeleteParams::default()
                    };
                    match self.api.delete(&name, &dp).await {
                        Ok(_) => {
                            tracing::info!(lease = %name, "sharding: deleted the membership Lease of a replica long gone")
                        }
                        Err(e) => {
                            tracing::debug!(lease = %name, error = %e, "sharding: membership Lease not deleted")
                        }
                    }
                }
            }
        }
        self.ctx
            .metrics
            .shards_held
            .set(i64::try_from(self.ownership.held().len()).unwrap_or(i64::MAX));
        super::forget_shards(&self.ctx, &self.ownership, &lost);
        super::reconcile_shards(&self.ctx, &self.ownership, &acquired);
        raced && self.ownership.held().len() < share
    }

    /// Writes shard Lease `name` held by this replica (`hold`) or released: over `base`, the
    /// Lease as listed (its resourceVersion is the precondition: the plan's `version`), or
    /// created when `base` is None.
    async fn write(&self, name: &str, base: Option<&Lease>, hold: bool) -> Result<(), kube::Error> {
        let holder = hold.then_some(self.settings.identity.as_str());
        let lease = self.lease(name, holder, base);
        match base {
            None => self.api.create(&PostParams::default(), &lease).await?,
            Some(_) => {
                self.api
                    .replace(name, &PostParams::default(), &lease)
                    .await?
            }
        };
        Ok(())
    }

    /// On shutdown, after the controllers stopped: clear the holder of every held shard and
    /// of the membership Lease, so the other replicas take over at once.
    pub(super) async fn release_all(&mut self) {
        let held: Vec<u32> = self.ownership.held();
        for shard in &held {
            self.ownership.drop_shard(*shard);
        }
        self.ctx.metrics.shards_held.set(0);
        let me = self.settings.identity.clone();
        let mut names: Vec<String> = held
            .iter()
            .map(|s| format!("{SHARD_LEASE_PREFIX}{s}"))
            .collect();
        names.push(self.member.clone());
        for name in names {
            let current = match self.api.get_opt(&name).await {
                Ok(Some(l)) => l,
                _ => continue,
            };
            let holder = current
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone());
            if holder.as_deref() != Some(me.as_str()) {
                continue;
            }
            let lease = self.lease(&name, None, Some(&current));
            match tokio::time::timeout(
                Duration::from_secs(3),
                self.api.replace(&name, &PostParams::default(), &lease),
            )
            .await
            {
                Ok(Ok(_)) => {
                    if let Some(shard) = name.strip_prefix(SHARD_LEASE_PREFIX) {
                        tracing::info!(shard, "released shard {shard}");
                    }
                }
                _ => {
                    tracing::warn!(lease = %name, "sharding: not released on shutdown; it runs out instead")
                }
            }
        }
    }
}

/// The listed Lease `name` at resourceVersion `version` (the plan decided on it).
fn listed_at<'a>(
    leases: &'a BTreeMap<String, Lease>,
    name: &str,
    version: &str,
) -> Option<&'a Lease> {
    leases
        .get(name)
        .filter(|l| l.metadata.resource_version.as_deref() == Some(version))
}

fn view(l: &Lease) -> LeaseView {
    let spec = l.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed: spec.renew_time.map(|t| t.0),
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        ),
        version: l.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// The plan's view of a listing (Leases of other names are ignored).
fn snapshot(leases: &BTreeMap<String, Lease>) -> Snapshot {
    let mut s = Snapshot::default();
    for (name, l) in leases {
        if let Some(i) = name
            .strip_prefix(SHARD_LEASE_PREFIX)
            .and_then(|i| i.parse::<u32>().ok())
        {
            s.shards.insert(i, view(l));
        } else if name.starts_with(MEMBER_LEASE_PREFIX) {
            s.members.insert(name.clone(), view(l));
        }
    }
    s
}
