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
use crate::secrets::{key_of, RefError};
use crate::state::ConnectionState;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use secrecy::SecretString;
use std::collections::HashMap;
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

/// A Secret read from the API server: when, how long it may be kept, its data.
type ReadSecret = (Instant, Duration, Arc<Secret>);

/// The caches; stores are installed by each controller run (they change with leadership).
#[derive(Default)]
pub struct Caches {
    clients: RwLock<Option<Store<ExactOAuthClient>>>,
    managed: RwLock<Option<Store<Secret>>>,
    watched: RwLock<HashMap<SecretId, Store<Secret>>>,
    /// Secrets read from the API server (their data only): when, how long they are kept.
    values: Mutex<HashMap<SecretId, ReadSecret>>,
    statuses: Mutex<HashMap<String, (u64, ExactConnectionStatus)>>,
    peers: PeerCaches,
    own_writes: Mutex<HashMap<SecretId, String>>,
    /// States this process wrote, until the managed-Secret watch shows them.
    pub written: Arc<WrittenStates>,
    /// Set while the controllers stop: nothing may wait for a watch any more.
    stopping: StopFlag,
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
    trigger: Mutex<Option<UnboundedSender<ObjectRef<ExactConnection>>>>,
    divisions: Mutex<HashMap<String, Discovered>>,
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
    pub fn install(&self, clients: Store<ExactOAuthClient>, managed: Store<Secret>) {
        if let Ok(mut c) = self.clients.write() {
            *c = Some(clients);
        }
        if let Ok(mut s) = self.managed.write() {
            *s = Some(managed);
        }
    }

    /// Waits (at most `limit`, and not once the controllers stop) until the managed-Secret
    /// watch has listed, so the first reconciles after a start read their state and workload
    /// Secrets from it instead of a GET each. Returns at once when it has listed.
    pub async fn wait_for_managed(&self, limit: Duration) {
        let Some(store) = self.managed.read().ok().and_then(|s| s.clone()) else {
            return;
        };
        if ready(&store) {
            return;
        }
        let mut stopping = self.stopping.0.subscribe();
        tokio::select! {
            _ = store.wait_until_ready() => {}
            _ = stopping.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(limit) => {}
        }
    }

    /// The controllers start (`true`: they stop; waiters give up).
    pub fn set_stopping(&self, stopping: bool) {
        self.stopping.0.send_replace(stopping);
    }

    /// A client from the watch cache, if it has it.
    pub fn client(&self, namespace: &str, name: &str) -> Option<Arc<ExactOAuthClient>> {
        let store = self.clients.read().ok()?.clone()?;
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// A managed Secret from its watch: Some(None) when the synced watch has no such Secret,
    /// None when the watch is not synced (the caller asks the API server).
    pub fn managed_secret(&self, namespace: &str, name: &str) -> Option<Option<Arc<Secret>>> {
        let store = self.managed.read().ok()?.clone()?;
        ready(&store).then(|| store.get(&ObjectRef::new(name).within(namespace)))
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
        if let Ok(values) = self.values.lock() {
            if let Some((at, _, secret)) = values.get(&id) {
                if at.elapsed() < ttl {
                    return key_of(Some(secret), namespace, name, key);
                }
            }
        }
        tracing::debug!(
            namespace,
            secret = name,
            ttl_ms = ttl.as_millis() as u64,
            "reading a Secret from the API server"
        );
        let secret = api
            .get_opt(name)
            .await
            .map_err(|source| RefError::Api {
                namespace: namespace.into(),
                name: name.into(),
                source,
            })?
            .map(|s| Arc::new(data_only(s)));
        if let (Some(secret), Ok(mut values)) = (&secret, self.values.lock()) {
            // Secrets nobody asks for any more go once older than they may be reused for.
            // (Not by this caller's TTL: a read afresh, TTL 0, must not evict what every
            // other connection still reuses; and its fresh value serves later callers.)
            values.retain(|_, (at, kept_for, _)| at.elapsed() < *kept_for);
            values.insert(id, (Instant::now(), ttl.max(VALUE_KEEP), secret.clone()));
        }
        key_of(secret.as_deref(), namespace, name, key)
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
    pub fn last_status(&self, uid: &str, seen_rv: Option<&str>) -> Option<ExactConnectionStatus> {
        let mut statuses = self.statuses.lock().ok()?;
        let (written_rv, status) = statuses.get(uid)?;
        let seen: u64 = seen_rv?.parse().ok()?;
        if seen < *written_rv {
            return Some(status.clone());
        }
        statuses.remove(uid);
        None
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
