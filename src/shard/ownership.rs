//! Which shard an object is in, and which shards this replica holds: no Kubernetes client
//! and no Context, so the Context can hold an [`Ownership`] without a cycle.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Prefix of the shard Leases (`exact-operator-shard-<i>`).
pub const SHARD_LEASE_PREFIX: &str = "exact-operator-shard-";
/// Prefix of the membership Leases (`exact-operator-member-<replica>`).
pub const MEMBER_LEASE_PREFIX: &str = "exact-operator-member-";
/// Label on every Lease of the shard set (the listing selects by it).
pub const SHARD_SET_LABEL: &str = "exact-operator.io/shard-set";
/// Value of [`SHARD_SET_LABEL`].
pub const SHARD_SET: &str = "exact-operator";

/// How often a client or webhook subscription of another replica's shard is looked at
/// again (they are few; connections instead wait for their shard's acquisition).
pub const UNOWNED_RECHECK: Duration = Duration::from_secs(10);

/// FNV-1a 64: the same on every replica, build and platform (unlike std's RandomState).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard of an object UID among `shards`.
pub fn shard_of(uid: &str, shards: u32) -> u32 {
    (stable_hash(uid.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// Shard timing and naming.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// Number of shards (>= 1).
    pub shards: u32,
    /// Namespace of the Leases.
    pub namespace: String,
    /// Holder identity: the pod name, so a restarted container resumes its shards at once.
    pub identity: String,
    /// Lease duration: a dead replica's shards are taken over this long after its last renewal.
    pub duration: Duration,
    /// How often Leases are listed, renewed and balanced (about a third of the duration).
    pub tick: Duration,
}

/// The shards this replica holds, each until its lease would run out by the local clock
/// (from the start of its last successful renewal), read by every reconcile.
#[derive(Debug)]
pub struct Ownership {
    shards: u32,
    held: RwLock<HashMap<u32, Instant>>,
}

impl Ownership {
    /// Nothing held yet.
    pub fn new(shards: u32) -> Self {
        Ownership {
            shards: shards.max(1),
            held: RwLock::new(HashMap::new()),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Whether this replica works on the object with `uid` now.
    pub fn owns_uid(&self, uid: &str) -> bool {
        self.holds(shard_of(uid, self.shards))
    }

    /// Whether shard `i` is held and its lease still running.
    pub fn holds(&self, shard: u32) -> bool {
        self.held
            .read()
            .ok()
            .and_then(|h| h.get(&shard).copied())
            .is_some_and(|until| until > Instant::now())
    }

    /// Shard indices held (leases still running).
    pub fn held(&self) -> Vec<u32> {
        let now = Instant::now();
        let mut v: Vec<u32> = self
            .held
            .read()
            .map(|h| {
                h.iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(i, _)| *i)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Every shard with an entry, also those whose lease ran out by the local clock (they
    /// are dropped, and their series forgotten, once the listing shows another holder).
    pub(super) fn known(&self) -> Vec<u32> {
        self.held
            .read()
            .map(|h| h.keys().copied().collect())
            .unwrap_or_default()
    }

    pub(super) fn hold(&self, shard: u32, until: Instant) {
        if let Ok(mut h) = self.held.write() {
            h.insert(shard, until);
        }
    }

    pub(super) fn drop_shard(&self, shard: u32) -> bool {
        self.held
            .write()
            .map(|mut h| h.remove(&shard).is_some())
            .unwrap_or(false)
    }
}

/// Whether this process works on `obj` now: always without sharding (`shards` None), else
/// when it holds the object's shard. Objects without a UID (never from the API server)
/// count as owned.
pub fn owns<K: kube::Resource>(shards: Option<&Ownership>, obj: &K) -> bool {
    match (shards, obj.meta().uid.as_deref()) {
        (Some(o), Some(uid)) => o.owns_uid(uid),
        _ => true,
    }
}
