//! The Kubernetes home of a chain: the connection's state Secret, written with
//! resourceVersion preconditions, as the chain core's [`StateStore`].

use crate::chain::{StateStore, Stored, WriteError};
use crate::secrets::{is_conflict, load_state, write_state};
use crate::state::ConnectionState;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;

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
}

impl StateHandle {
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
}
