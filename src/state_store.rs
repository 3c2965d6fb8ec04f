//! The Kubernetes home of a chain: the connection's state Secret, written with
//! resourceVersion preconditions, as the chain core's [`StateStore`].

use crate::chain::{Entitlement, StateStore, Stored, WriteError};
use crate::journal::{Entry, Journal};
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
        })
    }

    /// Conditional write (create when `rv` is None).
    pub async fn write(
        &self,
        state: &ConnectionState,
        rv: Option<&str>,
    ) -> Result<String, kube::Error> {
        write_state(
            &self.api,
            &self.name,
            &self.owner,
            &self.connection,
            state,
            rv,
        )
        .await
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

    fn settle(&self) {
        if let Some(journal) = &self.journal {
            journal.settle(&self.namespace, &self.connection);
        }
    }
}
