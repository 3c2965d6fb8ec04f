//! The Kubernetes home of a chain: the connection's state Secret, written with
//! resourceVersion preconditions, as the chain core's [`StateStore`].

use crate::cache::{Caches, WrittenStates};
use crate::chain::{Entitlement, StateStore, Stored, WriteError};
use crate::journal::{Entry, Intent, Journal};
use crate::secrets::{is_conflict, load_state, write_state};
use crate::state::ConnectionState;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use std::sync::Arc;

/// Where a connection's state lives.
pub struct StateHandle {
    /// Secrets of the connection's namespace.
    pub api: Api<Secret>,
    /// State Secret name.
    pub name: String,
    /// Owner reference to the connection.
    pub owner: OwnerReference,
    /// Connection name (for labels).
    pub connection: String,
    /// Namespace of the connection.
    pub namespace: String,
    /// The token journal, if the operator keeps one.
    pub journal: Option<Arc<Journal>>,
    /// Journal write durations.
    pub metrics: Option<crate::metrics::Metrics>,
    /// Where this process's writes are remembered until the managed-Secret watch shows them.
    pub written: Option<Arc<WrittenStates>>,
}

impl StateHandle {
    /// The state Secret of `conn` (None for an object without namespace or UID).
    pub fn for_connection(
        ctx: &crate::context::Context,
        conn: &crate::crd::ExactConnection,
    ) -> Option<StateHandle> {
        use kube::{Resource, ResourceExt};
        let namespace = conn.namespace()?;
        let connection = conn.name_any();
        Some(StateHandle {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            name: crate::secrets::state_secret_name(&connection),
            owner: conn.controller_owner_ref(&())?,
            connection,
            namespace,
            journal: ctx.journal.clone(),
            metrics: Some(ctx.metrics.clone()),
            written: Some(ctx.caches.written.clone()),
        })
    }

    /// The state as the watch (or this process's last write) shows it; from the API server
    /// only while the watch is not synced. A stale answer is safe: every write is conditional
    /// on its resourceVersion, so it ends in a 409 and a retry, never in a second spend.
    pub async fn load_cached(&self, caches: &Caches) -> Result<Stored, kube::Error> {
        match caches.state(&self.namespace, &self.name) {
            Some(stored) => Ok(stored),
            None => StateStore::load(self).await,
        }
    }

    /// Conditional write (create when `rv` is None).
    pub async fn write(
        &self,
        state: &ConnectionState,
        rv: Option<&str>,
    ) -> Result<String, kube::Error> {
        let written = write_state(
            &self.api,
            &self.name,
            &self.owner,
            &self.connection,
            state,
            rv,
        )
        .await?;
        if let Some(w) = &self.written {
            w.remember(&self.namespace, &self.name, &written, state);
        }
        Ok(written)
    }
}

impl StateStore for StateHandle {
    type Error = kube::Error;

    async fn load(&self) -> Result<Stored, kube::Error> {
        let s = load_state(&self.api, &self.name).await?;
        Ok(Stored {
            state: s.state,
            version: s.resource_version,
        })
    }

    async fn write(
        &self,
        state: &ConnectionState,
        version: Option<&str>,
    ) -> Result<String, WriteError<kube::Error>> {
        StateHandle::write(self, state, version).await.map_err(|e| {
            if is_conflict(&e) {
                WriteError::Conflict
            } else {
                WriteError::Other(e)
            }
        })
    }

    fn journal(&self, state: &ConnectionState, entitlement: Entitlement) {
        let Some(journal) = &self.journal else {
            return;
        };
        let started = std::time::Instant::now();
        let entry = Entry::new(&self.namespace, &self.connection, state, entitlement);
        if let Err(e) = journal.record(&entry) {
            // Persisting goes on; only the protection against a crash before it is missing.
            tracing::error!(connection = %self.connection, error = %e, "writing the token journal failed");
        }
        if let Some(m) = &self.metrics {
            m.journal_write.observe(started.elapsed().as_secs_f64());
        }
    }

    fn intend(&self, chain: &str, holder: &str) {
        let Some(journal) = &self.journal else {
            return;
        };
        let intent = Intent::new(&self.namespace, &self.connection, chain, holder);
        if let Err(e) = journal.intend(&intent) {
            // The call goes on; only the account of a death during it is missing.
            tracing::error!(connection = %self.connection, error = %e, "writing the token journal intent failed");
        }
    }

    fn settle(&self) {
        if let Some(journal) = &self.journal {
            journal.settle(&self.namespace, &self.connection);
        }
    }
}
