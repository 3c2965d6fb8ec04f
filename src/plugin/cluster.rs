//! Connecting to the cluster the way kubectl does (`--kubeconfig`, `--context`, `KUBECONFIG`,
//! `~/.kube/config`, in-cluster), resolving the namespace, and the lookups and condition
//! helpers the commands share.

use super::Error;
use crate::conditions::reason;
use crate::crd::{Condition, ExactConnection};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::PathBuf;

/// Where to connect and which namespace to use: the global flags of every command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Target {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A client plus the namespace commands act in.
pub struct Session {
    /// Client for the selected cluster and user.
    pub client: Client,
    /// `--namespace`, else the kubeconfig context's namespace, else "default".
    pub namespace: String,
}

impl Session {
    /// Connects as kubectl would with the same flags.
    pub async fn connect(target: &Target) -> Result<Session, Error> {
        let options = KubeConfigOptions {
            context: target.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &target.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None if target.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
            None => Config::infer()
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let namespace = target
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Session { client, namespace })
    }

    /// The ExactConnections API of the session's namespace.
    pub fn connections(&self) -> Api<ExactConnection> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Reads one connection; a missing one (or missing CRD) is a clear error.
    pub async fn connection(&self, name: &str) -> Result<ExactConnection, Error> {
        get_connection(&self.connections(), &self.namespace, name).await
    }
}

/// Reads connection `namespace/name` from `api`.
pub async fn get_connection(
    api: &Api<ExactConnection>,
    namespace: &str,
    name: &str,
) -> Result<ExactConnection, Error> {
    match api.get(name).await {
        Ok(c) => Ok(c),
        Err(kube::Error::Api(s)) if s.code == 404 && is_missing_resource_type(&s) => {
            Err(Error::CrdMissing)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::NotFound {
            kind: "ExactConnection",
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        Err(e) => Err(Error::kube(
            format!("reading ExactConnection {namespace}/{name}"),
            e,
        )),
    }
}

/// Whether a 404 means "no such resource type" (CRD not installed) rather than "no such object".
pub fn is_missing_resource_type(status: &kube::core::Status) -> bool {
    status.details.as_ref().is_none_or(|d| d.name.is_empty())
        && status
            .message
            .contains("could not find the requested resource")
}

/// A short description of a kube error: the API server's message when it gave one.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => {
            format!("{} ({} {})", s.message, s.code, s.reason)
        }
        other => other.to_string(),
    }
}

/// The Ready condition of a connection, if the operator has written one.
pub fn ready_condition(conn: &ExactConnection) -> Option<&Condition> {
    conn.status
        .as_ref()
        .and_then(|s| crate::conditions::find_ready(&s.conditions))
}

/// The Ready condition as `status` shows it, for connections and webhook subscriptions.
#[derive(serde::Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Whether Ready=True.
    pub ready: bool,
    /// The Ready condition's status: "True", "False", or "Unknown" when there is none yet.
    pub ready_status: String,
    /// The Ready condition's reason, if any.
    pub reason: Option<String>,
    /// The Ready condition's message, if any.
    pub message: Option<String>,
}

impl Readiness {
    /// Summarizes a Ready condition (None: not reported yet).
    pub fn of(ready: Option<&Condition>) -> Readiness {
        Readiness {
            ready: ready.is_some_and(|c| c.status == "True"),
            ready_status: ready.map_or_else(|| "Unknown".into(), |c| c.status.clone()),
            reason: ready.map(|c| c.reason.clone()),
            message: ready.map(|c| c.message.clone()),
        }
    }
}

/// Whether the connection is Ready=True.
pub fn is_ready(conn: &ExactConnection) -> bool {
    ready_condition(conn).is_some_and(|c| c.status == "True")
}

/// Ready reasons that stop token calls until a person changes something.
pub const FAILURE_REASONS: [&str; 7] = [
    reason::REAUTHORIZATION_REQUIRED,
    reason::INVALID_CLIENT,
    reason::CLIENT_NOT_READY,
    reason::CLIENT_NOT_ALLOWED,
    reason::TARGET_SECRET_CONFLICT,
    reason::INVALID_SPEC,
    crate::template::INVALID_TEMPLATE,
];

/// Whether `reason` is one of [`FAILURE_REASONS`].
pub fn is_failure_reason(reason: &str) -> bool {
    FAILURE_REASONS.contains(&reason)
}

/// Name of the connection's workload Secret: `status.secretName`, else
/// `spec.target.secretName`, else `<connection>-exact-token`.
pub fn workload_secret_name(conn: &ExactConnection) -> String {
    conn.status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .or_else(|| conn.spec.target.secret_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}-exact-token",
                conn.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// `namespace/name` of an object.
pub fn qualified(conn: &ExactConnection) -> String {
    format!(
        "{}/{}",
        conn.metadata.namespace.as_deref().unwrap_or_default(),
        conn.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ExactConnectionStatus;

    fn conn(status: Option<ExactConnectionStatus>, target: Option<&str>) -> ExactConnection {
        let mut c: ExactConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "exact-operator.io/v1alpha1", "kind": "ExactConnection",
            "metadata": {"name": "acme", "namespace": "team-a"},
            "spec": {"clientRef": {"name": "app"}, "target": {"secretName": target}},
        }))
        .expect("valid connection");
        c.status = status;
        c
    }

    #[test]
    fn workload_secret_prefers_status_then_spec_then_default() {
        assert_eq!(workload_secret_name(&conn(None, None)), "acme-exact-token");
        assert_eq!(workload_secret_name(&conn(None, Some("api"))), "api");
        let status = ExactConnectionStatus {
            secret_name: Some("published".into()),
            ..Default::default()
        };
        assert_eq!(
            workload_secret_name(&conn(Some(status), Some("api"))),
            "published"
        );
        assert_eq!(qualified(&conn(None, None)), "team-a/acme");
    }

    #[test]
    fn failure_reasons_are_the_ones_that_need_a_person() {
        assert!(is_failure_reason("ReauthorizationRequired"));
        assert!(is_failure_reason("InvalidSpec"));
        assert!(is_failure_reason("InvalidTemplate"));
        assert!(!is_failure_reason("AwaitingAuthorization"));
        assert!(!is_failure_reason("RefreshFailing"));
        assert!(!is_failure_reason("TokenPublished"));
    }

    #[test]
    fn missing_crd_is_told_apart_from_a_missing_object() {
        let no_type = kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        );
        assert!(is_missing_resource_type(&no_type));
        let mut no_object = kube::core::Status::failure(
            "exactconnections.exact-operator.io \"x\" not found",
            "NotFound",
        );
        no_object.details = serde_json::from_value(serde_json::json!({
            "name": "x", "kind": "exactconnections", "group": "exact-operator.io"
        }))
        .expect("valid details");
        assert!(!is_missing_resource_type(&no_object));
    }
}
