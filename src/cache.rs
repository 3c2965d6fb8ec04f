//! Caches that spare the API server a read on every reconcile. Each holds the operator's own
//! objects only, so memory grows with connections, never with other people's Secrets:
//! - the watched ExactOAuthClients;
//! - the managed Secrets (state and workload Secrets, watched by the managed-by label);
//! - the Secrets ExactOAuthClients reference, each watched by name while referenced
//!   (`crate::controller::referenced`);
//! - other referenced keys (bootstrap refresh tokens), re-read when older than a TTL;
//! - the state and status this process wrote last (the watches lag behind its own writes).

use crate::chain::Stored;
use crate::crd::{DivisionInfo, ExactConnection, ExactConnectionStatus, ExactOAuthClient};
use crate::packed_secrets::PackedSecrets;
use crate::secrets::{key_of, RefError};
use crate::state::ConnectionState;
use crate::user_index::{ConnectionId, UserIndex, UserKey};
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A Secret reduced to what key lookups need: its data (no metadata, no managedFields).
fn data_only(secret: Secret) -> Secret {
    Secret {
        data: secret.data,
        ..Secret::default()
    }
}

/// The least time a Secret read from the API server stays in memory for reuse.
const VALUE_KEEP: Duration = Duration::from_secs(3600);
type SecretId = (String, String);

/// How often Secrets read from the API server are checked for expiry (a scan of all of
/// them: once per read would make a cold start of N bootstrap reads cost N^2).
const VALUE_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What was kept of Secrets read from the API server (`T`), when each was read and how long
/// it is kept, and when the expired ones were last dropped.
struct ReadValues<T> {
    by_id: HashMap<SecretId, (Instant, Duration, T)>,
    pruned_at: Option<Instant>,
}

impl<T> Default for ReadValues<T> {
    fn default() -> Self {
        ReadValues {
            by_id: HashMap::new(),
            pruned_at: None,
        }
    }
}

impl<T: Clone> ReadValues<T> {
    fn insert(&mut self, id: SecretId, ttl: Duration, kept: T) {
        // Secrets nobody asks for any more go once older than they may be reused for.
        // (Not by this caller's TTL: a read afresh, TTL 0, must not evict what every other
        // connection still reuses; and its fresh value serves later callers.)
        if self
            .pruned_at
            .is_none_or(|at| at.elapsed() >= VALUE_PRUNE_EVERY)
        {
            self.by_id
                .retain(|_, (at, kept_for, _)| at.elapsed() < *kept_for);
            self.pruned_at = Some(Instant::now());
        }
        self.by_id
            .insert(id, (Instant::now(), ttl.max(VALUE_KEEP), kept));
    }

    /// What was kept of Secret `id`, if it was read less than `ttl` ago.
    fn fresh(&self, id: &SecretId, ttl: Duration) -> Option<T> {
        let (at, _, kept) = self.by_id.get(id)?;
        (at.elapsed() < ttl).then(|| kept.clone())
    }
}

/// What is kept of a Secret whose values are only compared (bootstrap Secrets): per key, the
/// digest of its value as `key_of` gives it (None: not usable text). A fraction of the data,
/// and no secret value stays in memory; a value that changed is read again to be used.
type KeyDigests = Arc<[(Box<str>, Option<String>)]>;

fn key_digests(secret: &Secret, namespace: &str, name: &str) -> KeyDigests {
    let keys = secret.data.iter().flat_map(|d| d.keys());
    let keys = keys.chain(secret.string_data.iter().flat_map(|d| d.keys()));
    let mut seen = HashSet::new();
    keys.filter(|k| seen.insert(k.as_str()))
        .map(|k| {
            let value = key_of(Some(secret), namespace, name, k).ok();
            let d = value.map(|v| crate::state::digest(secrecy::ExposeSecret::expose_secret(&v)));
            (k.as_str().into(), d)
        })
        .collect()
}

/// A Secret just read from the API server, for its values to be used now and dropped.
pub struct FreshSecret {
    namespace: String,
    name: String,
    secret: Option<Secret>,
}

impl FreshSecret {
    /// A key of it (errors as `secrets::key_of`).
    pub fn key(&self, key: &str) -> Result<SecretString, RefError> {
        key_of(self.secret.as_ref(), &self.namespace, &self.name, key)
    }
}

/// The caches; stores are installed by each controller run (they change with leadership).
#[derive(Default)]
pub struct Caches {
    clients: RwLock<Option<Store<ExactOAuthClient>>>,
    /// The managed-Secret watch (state and workload Secrets), packed.
    managed: PackedSecrets,
    watched: RwLock<HashMap<SecretId, Store<Secret>>>,
    /// Secrets read from the API server whose values are used (client and webhook secrets
    /// before their watch lists): their data.
    values: Mutex<ReadValues<Arc<Secret>>>,
    /// Secrets read from the API server whose values are compared (bootstrap Secrets):
    /// digests only.
    digests: Mutex<ReadValues<KeyDigests>>,
    statuses: Mutex<HashMap<String, (u64, ExactConnectionStatus)>>,
    peers: PeerCaches,
    own_writes: Mutex<HashMap<SecretId, String>>,
    /// States this process wrote, until the managed-Secret watch shows them.
    pub written: Arc<WrittenStates>,
    /// Set while the controllers stop: nothing may wait for a watch any more.
    stopping: StopFlag,
    /// When the controllers last started.
    running_since: Mutex<Option<Instant>>,
}

/// A flag that waiters can watch (tokio's watch channel, sender kept here).
struct StopFlag(tokio::sync::watch::Sender<bool>);

impl Default for StopFlag {
    fn default() -> Self {
        StopFlag(tokio::sync::watch::channel(false).0)
    }
}

/// What connections learn about each other: the watched connections (for same-user
/// checks, no LIST per reconcile), a way to have another connection reconciled, and the
/// divisions discovered per connection uid.
#[derive(Default)]
struct PeerCaches {
    connections: RwLock<Option<Store<ExactConnection>>>,
    users: Mutex<UserIndexFeed>,
    trigger: Mutex<Option<UnboundedSender<ObjectRef<ExactConnection>>>>,
    divisions: Mutex<HashMap<String, Discovered>>,
}

/// The user index and, during a (re-)list of the connection watch, the uids listed so far.
#[derive(Default)]
struct UserIndexFeed {
    index: UserIndex,
    listing: Option<HashSet<String>>,
}

/// The Exact user a connection's watched status names, keyed with its client.
fn user_of(conn: &ExactConnection) -> Option<UserKey> {
    let user = conn.status.as_ref()?.exact_user_id.clone()?;
    let (ns, name) = crate::crd::client_key(conn);
    Some((ns, name, user))
}

fn connection_id(conn: &ExactConnection) -> ConnectionId {
    (
        conn.metadata.namespace.clone().unwrap_or_default(),
        conn.metadata.name.clone().unwrap_or_default(),
    )
}

/// Divisions a connection's user may open, as last discovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// When they were asked.
    pub at: jiff::Timestamp,
    /// The divisions.
    pub divisions: Vec<DivisionInfo>,
    /// The refresh-request annotation value this discovery answered.
    pub request: Option<String>,
    /// Why the last try failed (the divisions are then the ones known before).
    pub error: Option<String>,
}

/// States written by this process, by (namespace, Secret name), at their resourceVersion.
#[derive(Default)]
pub struct WrittenStates(Mutex<HashMap<SecretId, (u64, ConnectionState)>>);

impl WrittenStates {
    /// Remembers a state written at resourceVersion `rv`.
    pub fn remember(&self, namespace: &str, name: &str, rv: &str, state: &ConnectionState) {
        let (Ok(rv), Ok(mut m)) = (rv.parse::<u64>(), self.0.lock()) else {
            return;
        };
        m.insert((namespace.into(), name.into()), (rv, state.clone()));
    }

    /// Forgets the state remembered for Secret `id` once the watch shows `seen_rv` (our
    /// write or a later one): it is kept only while the watch lags, not until the next read.
    fn seen(&self, id: &SecretId, seen_rv: u64) {
        if let Ok(mut m) = self.0.lock() {
            if m.get(id).is_some_and(|(rv, _)| seen_rv >= *rv) {
                m.remove(id);
            }
        }
    }

    /// States remembered (the watch has not shown them yet).
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |m| m.len())
    }

    /// Whether no state is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The remembered state when it is newer than `seen_rv` (what the watch shows); an entry
    /// the watch has caught up with is dropped.
    fn newer_than(&self, id: &SecretId, seen_rv: Option<u64>) -> Option<(String, ConnectionState)> {
        let mut m = self.0.lock().ok()?;
        let (rv, _) = m.get(id)?;
        if seen_rv.is_some_and(|seen| seen >= *rv) {
            m.remove(id);
            return None;
        }
        m.get(id).map(|(rv, s)| (rv.to_string(), s.clone()))
    }
}

/// A point within `ttl` picked by `key` (the shards' stable hash), the same for the same key.
fn spread_offset(key: &str, ttl: Duration) -> Duration {
    let hash = crate::shard::ownership::stable_hash(key.as_bytes());
    let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(hash % millis)
}

fn ready<K: kube::Resource + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    use futures::FutureExt;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

impl Caches {
    /// Installs the stores of a controller run.
    /// (The managed Secrets start afresh too: `observe_managed` fills them from the watch.)
    pub fn install(&self, clients: Store<ExactOAuthClient>) {
        if let Ok(mut c) = self.clients.write() {
            *c = Some(clients);
        }
        self.managed.reset();
    }

    /// Waits (until `limit` after the controllers started, and not once they stop) until
    /// the managed-Secret watch has listed, so the first reconciles after a start read their
    /// state and workload Secrets from it instead of a GET each. Returns at once when it has
    /// listed, or when the limit has passed (a watch that cannot list delays only the start).
    pub async fn wait_for_managed(&self, limit: Duration) {
        if self.managed.is_ready() {
            return;
        }
        let since = self.running_since.lock().ok().and_then(|s| *s);
        let left = since.map_or(limit, |t| limit.saturating_sub(t.elapsed()));
        if left.is_zero() {
            return;
        }
        let mut stopping = self.stopping.0.subscribe();
        tokio::select! {
            _ = self.managed.wait_until_ready() => {}
            _ = stopping.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(left) => {}
        }
    }

    /// The controllers start (`false`) or stop (`true`: waiters give up).
    pub fn set_stopping(&self, stopping: bool) {
        self.stopping.0.send_replace(stopping);
        if let (false, Ok(mut since)) = (stopping, self.running_since.lock()) {
            *since = Some(Instant::now());
        }
    }

    /// Whether the controllers are stopping.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.0.borrow()
    }

    /// Whether a process that has no value of Secret `namespace/name` yet may put off its
    /// first read, for the connection with `uid`, which re-reads it every `ttl` anyway: each
    /// connection's first read falls at its own point (by uid) within `ttl` of the start,
    /// so a restart over 10,000 connections does not begin with 10,000 reads.
    pub fn first_read_deferred(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        ttl: Duration,
    ) -> bool {
        let id = (namespace.to_string(), name.to_string());
        if ttl.is_zero() || self.digests.lock().is_ok_and(|v| v.by_id.contains_key(&id)) {
            return false;
        }
        let Some(since) = self.running_since.lock().ok().and_then(|s| *s) else {
            return false;
        };
        since.elapsed() < spread_offset(uid, ttl)
    }

    /// A client from the watch cache, if it has it.
    pub fn client(&self, namespace: &str, name: &str) -> Option<Arc<ExactOAuthClient>> {
        let store = self.clients.read().ok()?.clone()?;
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// A managed Secret from its watch: Some(None) when the synced watch has no such Secret,
    /// None when the watch is not synced (the caller asks the API server).
    pub fn managed_secret(&self, namespace: &str, name: &str) -> Option<Option<Secret>> {
        let managed = &self.managed;
        managed.is_ready().then(|| managed.get(namespace, name))
    }

    /// The state in Secret `name`: the newer of the watched Secret and this process's last
    /// write (version None: no such Secret). None when the watch is not synced.
    pub fn state(&self, namespace: &str, name: &str) -> Option<Stored> {
        let watched = self.managed_secret(namespace, name)?;
        let seen_rv = watched
            .as_ref()
            .and_then(|s| s.metadata.resource_version.as_deref()?.parse().ok());
        let id = (namespace.to_string(), name.to_string());
        if let Some((rv, state)) = self.written.newer_than(&id, seen_rv) {
            return Some(Stored {
                state,
                version: Some(rv),
            });
        }
        Some(match watched {
            Some(s) => Stored {
                state: s
                    .data
                    .as_ref()
                    .map(ConnectionState::from_data)
                    .unwrap_or_default(),
                version: s.metadata.resource_version.clone(),
            },
            None => Stored::default(),
        })
    }

    /// Starts serving Secret `namespace/name` from its own watch (see `referenced`).
    pub fn watch_secret(&self, namespace: &str, name: &str, store: Store<Secret>) {
        if let Ok(mut w) = self.watched.write() {
            w.insert((namespace.into(), name.into()), store);
        }
    }

    /// Stops serving a Secret from a watch that ended.
    pub fn unwatch_secret(&self, namespace: &str, name: &str) {
        if let Ok(mut w) = self.watched.write() {
            w.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    fn watched_key(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Option<Result<SecretString, RefError>> {
        let store = self
            .watched
            .read()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))?
            .clone();
        if !ready(&store) {
            return None;
        }
        Some(key_of(
            store
                .get(&ObjectRef::new(name).within(namespace))
                .as_deref(),
            namespace,
            name,
            key,
        ))
    }

    /// Reads a Secret key: from the Secret's own watch when it has one, else from the Secret
    /// read less than `ttl` ago (one read serves all its keys), else from the API server
    /// (errors and missing Secrets are not cached).
    pub async fn secret_key(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<SecretString, RefError> {
        if let Some(found) = self.watched_key(namespace, name, key) {
            return found;
        }
        let id = (namespace.to_string(), name.to_string());
        if let Some(secret) = self.values.lock().ok().and_then(|v| v.fresh(&id, ttl)) {
            return key_of(Some(&secret), namespace, name, key);
        }
        let secret = self.read(api, namespace, name, ttl).await?.map(Arc::new);
        if let (Some(secret), Ok(mut values)) = (&secret, self.values.lock()) {
            values.insert(id, ttl, secret.clone());
        }
        key_of(secret.as_deref(), namespace, name, key)
    }

    /// Key `key` of Secret `namespace/name` when its value may differ from the one whose
    /// digest is `known`: None when a read less than `ttl` ago gave that value, else the
    /// Secret read afresh (Ok(Some), whatever the key holds now). A key that was missing or
    /// unusable at that read is the same error again, without a read. Only digests are kept.
    pub async fn secret_unless_known(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        key: &str,
        ttl: Duration,
        known: Option<&str>,
    ) -> Result<Option<FreshSecret>, RefError> {
        let id = (namespace.to_string(), name.to_string());
        if let Some(kept) = self.digests.lock().ok().and_then(|d| d.fresh(&id, ttl)) {
            match kept.iter().find(|(k, _)| &**k == key) {
                Some((_, Some(d))) if Some(d.as_str()) == known => return Ok(None),
                Some((_, Some(_))) => {}
                Some((_, None)) => {
                    return Err(RefError::BadValue {
                        namespace: namespace.into(),
                        name: name.into(),
                        key: key.into(),
                    })
                }
                None => {
                    return Err(RefError::KeyMissing {
                        namespace: namespace.into(),
                        name: name.into(),
                        key: key.into(),
                    })
                }
            }
        }
        let secret = self.read(api, namespace, name, ttl).await?;
        if let (Some(secret), Ok(mut digests)) = (&secret, self.digests.lock()) {
            digests.insert(id, ttl, key_digests(secret, namespace, name));
        }
        Ok(Some(FreshSecret {
            namespace: namespace.into(),
            name: name.into(),
            secret,
        }))
    }

    /// Secret `namespace/name` from the API server, its data only (None: no such Secret).
    async fn read(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Secret>, RefError> {
        tracing::debug!(
            namespace,
            secret = name,
            ttl_ms = ttl.as_millis() as u64,
            "reading a Secret from the API server"
        );
        let secret = api.get_opt(name).await.map_err(|source| RefError::Api {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
        Ok(secret.map(data_only))
    }

    /// Remembers that this process wrote managed Secret `name` at resourceVersion `rv`.
    pub fn own_write(&self, namespace: &str, name: &str, rv: Option<&str>) {
        if let (Some(rv), Ok(mut w)) = (rv, self.own_writes.lock()) {
            w.insert((namespace.into(), name.into()), rv.into());
        }
    }

    /// Whether `secret` as watched is this process's own last write of it (its echo needs
    /// no reconcile). A deletion carries a newer resourceVersion, so it is never an echo.
    pub fn is_own_write(&self, secret: &Secret) -> bool {
        let (Some(ns), Some(name), Some(rv)) = (
            secret.metadata.namespace.as_ref(),
            secret.metadata.name.as_ref(),
            secret.metadata.resource_version.as_ref(),
        ) else {
            return false;
        };
        let Ok(mut w) = self.own_writes.lock() else {
            return false;
        };
        let id = (ns.clone(), name.clone());
        if w.get(&id) == Some(rv) {
            w.remove(&id);
            return true;
        }
        false
    }

    /// The status last written for the connection with `uid`, when it is fresher than the
    /// one seen at `seen_rv` (the watch cache lags behind our own writes; a newer
    /// resourceVersion means someone else wrote since, and then the object's status wins).
    /// Once the watch has caught up, the entry goes: the object's own status serves then,
    /// so this holds only the few statuses the watch has not shown yet (not one per
    /// connection for the life of the process).
    fn last_status(&self, uid: &str, seen_rv: Option<&str>) -> Option<ExactConnectionStatus> {
        let mut statuses = self.statuses.lock().ok()?;
        let (written_rv, status) = statuses.get(uid)?;
        let seen: u64 = seen_rv?.parse().ok()?;
        if seen < *written_rv {
            return Some(status.clone());
        }
        statuses.remove(uid);
        None
    }

    /// The freshest status known of `conn`: the one this process last wrote while the copy
    /// in hand is older than that write; else the watched copy's, when the watch has a newer
    /// one than the copy in hand; else the copy's own. A reconcile holds the copy it started
    /// with: its own earlier write can reach the watch (which forgets the written status)
    /// while it runs, and the copy's stale status would then make it write the same status
    /// again (3-5 % of new connections in a burst wrote their status twice).
    pub fn freshest_status(&self, conn: &ExactConnection) -> Option<ExactConnectionStatus> {
        let uid = conn.metadata.uid.as_deref().unwrap_or_default();
        let seen = conn.metadata.resource_version.as_deref();
        if let Some(status) = self.last_status(uid, seen) {
            return Some(status);
        }
        let rv = |c: &ExactConnection| {
            c.metadata
                .resource_version
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
        };
        let watched = self
            .peers
            .connections
            .read()
            .ok()
            .and_then(|s| s.as_ref()?.get(&ObjectRef::from_obj(conn)));
        match watched {
            Some(w) if w.metadata.uid == conn.metadata.uid && rv(&w) > rv(conn) => w.status.clone(),
            _ => conn.status.clone(),
        }
    }

    /// Remembers a status written at resourceVersion `rv`.
    pub fn remember_status(&self, uid: &str, rv: Option<&str>, status: &ExactConnectionStatus) {
        let Some(rv) = rv.and_then(|r| r.parse::<u64>().ok()) else {
            return;
        };
        if let Ok(mut s) = self.statuses.lock() {
            s.insert(uid.to_string(), (rv, status.clone()));
        }
    }

    /// Installs the connection store and the trigger of the connection controller run.
    pub fn install_connections(
        &self,
        connections: Store<ExactConnection>,
        trigger: UnboundedSender<ObjectRef<ExactConnection>>,
    ) {
        if let Ok(mut c) = self.peers.connections.write() {
            *c = Some(connections);
        }
        if let Ok(mut t) = self.peers.trigger.lock() {
            *t = Some(trigger);
        }
    }

    /// Keeps the managed Secrets (reduced by the caller) and drops what this process
    /// remembered of its own writes to one once the watch shows them (call with every event
    /// of the managed-Secret watch).
    pub fn observe_managed(&self, event: &watcher::Event<Secret>) {
        self.managed.apply(event);
        if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = event {
            let meta = &s.metadata;
            if let (Some(ns), Some(name), Some(rv)) = (
                meta.namespace.as_ref(),
                meta.name.as_ref(),
                meta.resource_version
                    .as_deref()
                    .and_then(|r| r.parse().ok()),
            ) {
                self.written.seen(&(ns.clone(), name.clone()), rv);
            }
        }
        if let watcher::Event::InitDone = event {
            // When reconciles stop reading state and workload Secrets from the API server.
            let since = self.running_since.lock().ok().and_then(|s| *s);
            tracing::info!(
                secrets = self.managed.len(),
                after_ms = since.map_or(0, |t| t.elapsed().as_millis() as u64),
                "managed Secrets listed"
            );
        }
    }

    /// Keeps the user index in step with the connection watch, and drops a status this
    /// process wrote once the watch shows it (call with every event of that watch).
    pub fn observe_connection(&self, event: &watcher::Event<ExactConnection>) {
        if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = event {
            if let (Some(uid), Some(rv)) = (
                c.metadata.uid.as_deref(),
                c.metadata.resource_version.as_deref(),
            ) {
                let _ = self.last_status(uid, Some(rv));
            }
        }
        let Ok(mut feed) = self.peers.users.lock() else {
            return;
        };
        let feed = &mut *feed;
        let mut index = |conn: &ExactConnection, listing: Option<&mut HashSet<String>>| {
            let Some(uid) = conn.metadata.uid.as_deref() else {
                return;
            };
            if let Some(seen) = listing {
                seen.insert(uid.to_string());
            }
            feed.index.set(uid, connection_id(conn), user_of(conn));
        };
        match event {
            watcher::Event::Init => feed.listing = Some(HashSet::new()),
            watcher::Event::InitApply(conn) => index(conn, feed.listing.as_mut()),
            watcher::Event::Apply(conn) => index(conn, None),
            watcher::Event::Delete(conn) => {
                if let Some(uid) = conn.metadata.uid.as_deref() {
                    feed.index.remove(uid);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = feed.listing.take() {
                    feed.index.retain(&seen);
                }
            }
        }
    }

    /// The watched connections on `client` whose watched status names Exact user `user`
    /// (from the user index: no scan of every connection).
    pub fn connections_of_user(
        &self,
        client: &(String, String),
        user: &str,
    ) -> Vec<Arc<ExactConnection>> {
        let ids = match self.peers.users.lock() {
            Ok(feed) => feed.index.of(client, user),
            Err(_) => return vec![],
        };
        let Some(store) = self.peers.connections.read().ok().and_then(|s| s.clone()) else {
            return vec![];
        };
        ids.into_iter()
            .filter_map(|(ns, name)| store.get(&ObjectRef::new(&name).within(&ns)))
            .collect()
    }

    /// Every watched connection (empty before the controller runs).
    pub fn connections(&self) -> Vec<Arc<ExactConnection>> {
        self.peers
            .connections
            .read()
            .ok()
            .and_then(|s| s.clone())
            .map(|s| s.state())
            .unwrap_or_default()
    }

    /// Asks the connection controller to reconcile `conn` soon.
    pub fn reconcile_soon(&self, conn: ObjectRef<ExactConnection>) {
        if let Some(tx) = self.peers.trigger.lock().ok().and_then(|t| t.clone()) {
            let _ = tx.unbounded_send(conn);
        }
    }

    /// The divisions last discovered for the connection with `uid`.
    pub fn divisions(&self, uid: &str) -> Option<Discovered> {
        self.peers.divisions.lock().ok()?.get(uid).cloned()
    }

    /// Remembers discovered divisions.
    pub fn remember_divisions(&self, uid: &str, found: Discovered) {
        if let Ok(mut d) = self.peers.divisions.lock() {
            d.insert(uid.to_string(), found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(division: i64) -> ExactConnectionStatus {
        ExactConnectionStatus {
            division: Some(division),
            ..Default::default()
        }
    }

    #[test]
    fn own_writes_are_forgotten_once_the_watch_shows_them() {
        let caches = Caches::default();
        caches
            .written
            .remember("ns", "c-state", "10", &ConnectionState::default());
        let secret = |rv: &str| Secret {
            metadata: kube::api::ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("c-state".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Secret::default()
        };
        caches.observe_managed(&watcher::Event::Apply(secret("9")));
        assert_eq!(caches.written.len(), 1, "the watch still lags");
        caches.observe_managed(&watcher::Event::Apply(secret("10")));
        assert!(caches.written.is_empty(), "shown: no longer kept");

        caches.remember_status("u", Some("20"), &status(1));
        let mut conn = ExactConnection::new(
            "c",
            serde_json::from_value(serde_json::json!({"clientRef": {"name": "x"}})).expect("spec"),
        );
        conn.metadata.uid = Some("u".into());
        conn.metadata.resource_version = Some("19".into());
        caches.observe_connection(&watcher::Event::Apply(conn.clone()));
        assert_eq!(caches.last_status("u", Some("19")), Some(status(1)));
        conn.metadata.resource_version = Some("21".into());
        caches.observe_connection(&watcher::Event::Apply(conn));
        assert_eq!(
            caches.last_status("u", Some("19")),
            None,
            "pruned by the watch"
        );
    }

    #[test]
    fn a_reconcile_holding_an_older_copy_sees_its_own_write_once_the_watch_has_it() {
        let caches = Caches::default();
        let (store, mut writer) = kube::runtime::reflector::store::<ExactConnection>();
        let (trigger, _triggers) = futures::channel::mpsc::unbounded();
        caches.install_connections(store, trigger);
        let mut in_hand = ExactConnection::new(
            "c",
            serde_json::from_value(serde_json::json!({"clientRef": {"name": "x"}})).expect("spec"),
        );
        in_hand.metadata.namespace = Some("ns".into());
        in_hand.metadata.uid = Some("u".into());
        in_hand.metadata.resource_version = Some("19".into());
        // The watch shows the connection at `rv` with `status`.
        let mut watch_shows = |rv: &str, status: Option<ExactConnectionStatus>| {
            let mut shown = in_hand.clone();
            shown.metadata.resource_version = Some(rv.into());
            shown.status = status;
            let event = watcher::Event::Apply(shown.clone());
            writer.apply_watcher_event(&event);
            caches.observe_connection(&event);
            shown
        };
        watch_shows("19", None);
        assert_eq!(
            caches.freshest_status(&in_hand),
            None,
            "nothing written yet"
        );

        caches.remember_status("u", Some("20"), &status(1));
        assert_eq!(
            caches.freshest_status(&in_hand),
            Some(status(1)),
            "the watch lags: our write"
        );
        // The write reaches the watch while a reconcile still holds the copy at 19.
        watch_shows("20", Some(status(1)));
        assert_eq!(
            caches.freshest_status(&in_hand),
            Some(status(1)),
            "the watched copy is newer than the one in hand"
        );
        // Someone else wrote since: their status, not ours.
        let newest = watch_shows("22", Some(status(2)));
        assert_eq!(caches.freshest_status(&in_hand), Some(status(2)));
        assert_eq!(caches.freshest_status(&newest), Some(status(2)));
        // The same name recreated (another uid): its copy in hand stands.
        let mut other = in_hand.clone();
        other.metadata.uid = Some("v".into());
        other.status = Some(status(3));
        assert_eq!(caches.freshest_status(&other), Some(status(3)));
    }

    #[tokio::test]
    async fn bootstrap_secrets_are_kept_as_digests_and_read_again_when_they_may_differ() {
        use k8s_openapi::ByteString;
        let secret = Secret {
            data: Some(
                [
                    ("refresh_token".to_string(), ByteString(b"tok\n".to_vec())),
                    ("bad".to_string(), ByteString(vec![0xff])),
                ]
                .into(),
            ),
            string_data: Some([("refresh_token".to_string(), "ignored".to_string())].into()),
            ..Secret::default()
        };
        let digests = key_digests(&secret, "ns", "boot");
        let tok = crate::state::digest("tok");
        assert_eq!(
            &digests[..],
            &[
                ("bad".into(), None),
                ("refresh_token".into(), Some(tok.clone()))
            ][..],
            "one entry per key, as key_of reads it (data over stringData, trimmed)"
        );
        assert!(
            digests.iter().all(|(_, d)| d.as_deref() != Some("tok")),
            "no value itself is kept"
        );

        let caches = Caches::default();
        let ttl = Duration::from_secs(60);
        caches
            .digests
            .lock()
            .expect("lock")
            .insert(("ns".into(), "boot".into()), ttl, digests);
        // Nothing listens on port 1: a read would fail as an API error.
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let api = Api::<Secret>::namespaced(kube::Client::try_from(config).expect("client"), "ns");
        let read = |key: &'static str, ttl, known: Option<String>| {
            let (caches, api) = (&caches, &api);
            async move {
                caches
                    .secret_unless_known(api, "ns", "boot", key, ttl, known.as_deref())
                    .await
                    .map(|fresh| fresh.is_some())
            }
        };
        assert!(matches!(
            read("refresh_token", ttl, Some(tok.clone())).await,
            Ok(false)
        ));
        assert!(matches!(
            read("bad", ttl, None).await,
            Err(RefError::BadValue { .. })
        ));
        assert!(matches!(
            read("other", ttl, None).await,
            Err(RefError::KeyMissing { .. })
        ));
        let differs = read("refresh_token", ttl, Some("another".into())).await;
        assert!(matches!(differs, Err(RefError::Api { .. })), "read again");
        let stale = read("refresh_token", Duration::ZERO, Some(tok)).await;
        assert!(
            matches!(stale, Err(RefError::Api { .. })),
            "TTL 0 reads afresh"
        );
    }

    #[test]
    fn first_reads_after_a_start_spread_over_the_recheck_time() {
        let caches = Caches::default();
        let ttl = Duration::from_secs(3600);
        assert!(
            !caches.first_read_deferred("ns", "boot", "uid-1", ttl),
            "not before the controllers run"
        );
        caches.set_stopping(false);
        let deferred = (0..1000)
            .filter(|i| caches.first_read_deferred("ns", "boot", &format!("uid-{i}"), ttl))
            .count();
        assert!(
            deferred > 990,
            "right after a start nearly every first read waits for its turn ({deferred})"
        );
        assert!(!caches.first_read_deferred("ns", "boot", "uid-1", Duration::ZERO));
        let offsets: Vec<Duration> = (0..1000)
            .map(|i| spread_offset(&format!("uid-{i}"), ttl))
            .collect();
        assert!(offsets.iter().all(|o| *o < ttl));
        let first_half = offsets.iter().filter(|o| **o < ttl / 2).count();
        assert!(
            (400..600).contains(&first_half),
            "spread evenly, not bunched ({first_half} of 1000 in the first half)"
        );
    }

    #[test]
    fn a_written_status_serves_until_the_watch_shows_it_then_goes() {
        let caches = Caches::default();
        caches.remember_status("u", Some("10"), &status(7));
        assert_eq!(
            caches.last_status("u", Some("9")),
            Some(status(7)),
            "watch lags"
        );
        assert_eq!(caches.last_status("u", Some("10")), None, "watch caught up");
        assert_eq!(
            caches.last_status("u", Some("9")),
            None,
            "the entry is gone once the watch has shown the write"
        );
        caches.remember_status("u", Some("12"), &status(8));
        assert_eq!(
            caches.last_status("u", Some("13")),
            None,
            "someone else wrote since"
        );
        assert_eq!(caches.last_status("u", Some("11")), None);
    }
}
