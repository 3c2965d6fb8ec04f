//! Nudging the pods that mount a workload Secret as a volume, right after it changes.
//!
//! The kubelet rewrites a Secret volume only when it syncs the pod: on its periodic resync
//! (`--sync-frequency`, 60 s plus up to 30 s of jitter) or when the pod object changes.
//! Exact keeps the old access token working only `refreshBefore` (25 s) after the operator
//! replaced it, so a plain mount holds an expired token for a good part of every cycle.
//! Patching an annotation on the pod makes the kubelet sync it at once, and the volume shows
//! the new token within a fraction of a second (measured on a real kubelet:
//! docs/token-freshness.md).
//!
//! Pods opt in with the label [`LABEL`]`: <secret name>`. After each write of a workload
//! Secret the operator lists the pods of the Secret's namespace by that label selector (it
//! never watches pods) and patches the annotation [`ANNOTATION`] on each one that mounts
//! the Secret. Cost: one list per publish plus one pod patch per opted-in pod per refresh
//! (about every 9.5 minutes per connection). Failures are logged and counted
//! (`exact_operator_pod_nudges_total{outcome="failed"}`), never fail the reconcile: the
//! kubelet's resync still delivers the token, only later.
//!
//! Off unless the operator runs with `--nudge-mounting-pods` (it then needs `list` and
//! `patch` on pods; the chart grants them with `nudgeMountingPods: true`).

use crate::context::Context;
use crate::crd::ExactConnection;
use crate::metrics::{Metrics, OutcomeLabel};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use std::time::Duration;

/// Label a pod carries to be nudged when the named workload Secret changes; its value is
/// the Secret's name (so at most 63 characters).
pub const LABEL: &str = "exact-operator.io/refresh-mounts";

/// Annotation the operator sets on a nudged pod: when it last published the token.
pub const ANNOTATION: &str = "exact-operator.io/token-published-at";

/// Upper bound on one round of nudges, so a slow API server cannot hold up the reconcile
/// that published the token; the kubelet's resync is the fallback anyway.
const NUDGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// Called right after the workload Secret `secret` of `conn` was written: nudges its
/// mounting pods when nudging is enabled.
pub async fn after_write(ctx: &Context, conn: &ExactConnection, secret: &str) {
    if !ctx.settings.nudge_mounting_pods {
        return;
    }
    let namespace = conn.namespace().unwrap_or_default();
    let namespace = namespace.as_str();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let round = nudge_pods(&api, &ctx.metrics, secret);
    if tokio::time::timeout(NUDGE_TIMEOUT, round).await.is_err() {
        count(&ctx.metrics, "failed");
        tracing::warn!(
            namespace,
            secret,
            "nudging mounting pods timed out; the kubelet resync delivers the token later"
        );
    }
}

/// Lists the opted-in pods of `secret` and patches [`ANNOTATION`] on each pod that mounts
/// it and is still running. Returns how many pods were patched.
pub async fn nudge_pods(api: &Api<Pod>, metrics: &Metrics, secret: &str) -> usize {
    if secret.len() > MAX_LABEL_VALUE {
        // No pod can carry this value in a label, so there is nothing to look up.
        tracing::debug!(
            secret,
            "Secret name longer than a label value: no pod can opt in to nudges"
        );
        return 0;
    }
    let pods = match api
        .list(&ListParams::default().labels(&format!("{LABEL}={secret}")))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            count(metrics, "failed");
            tracing::warn!(error = %e, secret, "listing pods to nudge failed; the kubelet resync delivers the token later");
            return 0;
        }
    };
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION: now}}});
    let mut patched = 0;
    for pod in pods.iter().filter(|p| should_nudge(p, secret)) {
        let name = pod.name_any();
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                patched += 1;
                count(metrics, "patched");
            }
            // Gone in the meantime: nothing left to refresh.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                count(metrics, "failed");
                tracing::warn!(error = %e, pod = %name, secret, "nudging a mounting pod failed; the kubelet resync delivers the token later");
            }
        }
    }
    tracing::debug!(secret, patched, "nudged mounting pods");
    patched
}

fn count(metrics: &Metrics, outcome: &str) {
    metrics
        .pod_nudges
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// A pod is nudged when it is not finished or terminating (the kubelet no longer syncs its
/// volumes) and mounts `secret` through a secret volume or a projected one. The label alone
/// is not enough: a mislabelled pod would be patched every refresh for nothing.
fn should_nudge(pod: &Pod, secret: &str) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    volumes.is_some_and(|volumes| {
        volumes.iter().any(|v| {
            let direct = v
                .secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some(secret));
            let projected = v
                .projected
                .as_ref()
                .and_then(|p| p.sources.as_ref())
                .is_some_and(|sources| {
                    sources
                        .iter()
                        .any(|src| src.secret.as_ref().is_some_and(|s| s.name == secret))
                });
            direct || projected
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("valid pod")
    }

    #[test]
    fn only_running_pods_that_mount_the_secret_are_nudged() {
        let direct = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [], "volumes": [{"name": "t", "secret": {"secretName": "acme-exact-token"}}]},
            "status": {"phase": "Running"}
        }));
        assert!(should_nudge(&direct, "acme-exact-token"));
        assert!(!should_nudge(&direct, "other-exact-token"));

        let projected = pod(serde_json::json!({
            "metadata": {"name": "b"},
            "spec": {"containers": [], "volumes": [{"name": "t", "projected": {"sources": [
                {"configMap": {"name": "cm"}}, {"secret": {"name": "acme-exact-token"}}]}}]},
        }));
        assert!(should_nudge(&projected, "acme-exact-token"));

        let env_only = pod(serde_json::json!({
            "metadata": {"name": "c"},
            "spec": {"containers": [], "volumes": [{"name": "e", "emptyDir": {}}]}
        }));
        assert!(!should_nudge(&env_only, "acme-exact-token"));

        let mut finished = direct.clone();
        finished.status.as_mut().expect("status").phase = Some("Succeeded".into());
        assert!(!should_nudge(&finished, "acme-exact-token"));

        let terminating = pod(serde_json::json!({
            "metadata": {"name": "d", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [], "volumes": [{"name": "t", "secret": {"secretName": "acme-exact-token"}}]}
        }));
        assert!(!should_nudge(&terminating, "acme-exact-token"));
    }
}
