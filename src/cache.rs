//! Caches that spare the API server a read on every reconcile: the watched
//! ExactOAuthClients, the metadata of all Secrets (resourceVersions only, no data), the
//! values of referenced Secret keys (reused while their Secret's resourceVersion is
//! unchanged) and the last status written per connection.

use crate::crd::{DivisionInfo, ExactConnection, ExactConnectionStatus, ExactOAuthClient};
use crate::secrets::{read_key_versioned, RefError};
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

type KeyId = (String, String, String);

/// The caches; stores are installed by each controller run (they change with leadership).
#[derive(Default)]
pub struct Caches {
    clients: RwLock<Option<Store<ExactOAuthClient>>>,
    secret_meta: RwLock<Option<Store<PartialObjectMeta<Secret>>>>,
    values: Mutex<HashMap<KeyId, (String, SecretString)>>,
    statuses: Mutex<HashMap<String, (u64, ExactConnectionStatus)>>,
    peers: PeerCaches,
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

impl Caches {
    /// Installs the stores of a controller run.
    pub fn install(
        &self,
        clients: Store<ExactOAuthClient>,
        secret_meta: Store<PartialObjectMeta<Secret>>,
    ) {
        if let Ok(mut c) = self.clients.write() {
            *c = Some(clients);
        }
        if let Ok(mut s) = self.secret_meta.write() {
            *s = Some(secret_meta);
        }
    }

    /// A client from the watch cache, if it has it.
    pub fn client(&self, namespace: &str, name: &str) -> Option<Arc<ExactOAuthClient>> {
        let store = self.clients.read().ok()?.clone()?;
        store.get(&ObjectRef::new(name).within(namespace))
    }

    fn secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        let store = self.secret_meta.read().ok()?.clone()?;
        store
            .get(&ObjectRef::new(name).within(namespace))?
            .metadata
            .resource_version
            .clone()
    }

    /// Reads a Secret key, reusing the cached value while the Secret's resourceVersion (as
    /// seen by the metadata watch) is the one it was read at.
    pub async fn secret_key(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<SecretString, RefError> {
        let id = (namespace.to_string(), name.to_string(), key.to_string());
        if let Some(rv) = self.secret_version(namespace, name) {
            if let Ok(values) = self.values.lock() {
                if let Some((cached_rv, v)) = values.get(&id) {
                    if *cached_rv == rv {
                        return Ok(v.clone());
                    }
                }
            }
        }
        let (value, rv) = read_key_versioned(api, namespace, name, key).await?;
        if let (Some(rv), Ok(mut values)) = (rv, self.values.lock()) {
            values.insert(id, (rv, value.clone()));
        }
        Ok(value)
    }

    /// The status last written for the connection with `uid`, when it is fresher than the
    /// one seen at `seen_rv` (the watch cache lags behind our own writes; a newer
    /// resourceVersion means someone else wrote since, and then the object's status wins).
    pub fn last_status(&self, uid: &str, seen_rv: Option<&str>) -> Option<ExactConnectionStatus> {
        let statuses = self.statuses.lock().ok()?;
        let (written_rv, status) = statuses.get(uid)?;
        let seen: u64 = seen_rv?.parse().ok()?;
        (seen <= *written_rv).then(|| status.clone())
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
