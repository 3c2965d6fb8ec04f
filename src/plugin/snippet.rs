//! `kubectl exact snippet`: YAML for a workload that reads a connection's token through the
//! token agent sidecar (`exact-operator agent`), with the least RBAC the agent needs: a
//! ServiceAccount, a Role allowed to get/list/watch that one Secret, and its RoleBinding.
//! With `--mount`: a workload mounting the token Secret as a volume instead, its pods
//! labelled for the operator's pod nudge (`crate::nudge`), so the volume is refreshed at
//! once after each publish instead of at the kubelet's next resync.

use super::cluster::{workload_secret_name, Session};
use super::{out, Error, EXIT_OK};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Serialize;

/// Default image of the token agent (the operator image; `--image` overrides it).
pub const DEFAULT_IMAGE: &str = "ghcr.io/exact-operator/exact-operator:latest";
/// Where the agent writes the token files, shared with the workload through an emptyDir.
pub const TOKEN_DIR: &str = "/var/run/exact";
/// Port of the agent's `/healthz` and `/readyz` (no token values), for the startup probe.
pub const HEALTH_PORT: u16 = 8098;
/// User and group the agent runs as; the pod's fsGroup, so the app can read the 0640 files.
pub const AGENT_UID: i64 = 65532;

/// What the snippet is generated for.
#[derive(Debug, Clone)]
pub struct Params {
    /// Namespace of the connection (and so of the workload).
    pub namespace: String,
    /// The connection's name (for labels and comments).
    pub connection: String,
    /// The workload Secret the agent mirrors.
    pub secret: String,
    /// Agent image.
    pub image: String,
    /// Name of the Deployment and its ServiceAccount.
    pub app: String,
    /// Mount the Secret as a volume (nudged) instead of running the agent.
    pub mount: bool,
}

fn to_yaml<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_yaml::to_string(value).map_err(|e| Error::Render(e.to_string()))
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| Error::Render(e.to_string()))
}

/// The multi-document YAML: ServiceAccount, Role, RoleBinding, Deployment; with
/// [`Params::mount`] only the Deployment mounting the Secret.
pub fn render(p: &Params) -> Result<String, Error> {
    if p.mount {
        return render_mount(p);
    }
    let ns = &p.namespace;
    let role = format!("{}-exact-token-reader", p.app);
    let labels = serde_json::json!({
        "app.kubernetes.io/name": p.app,
        "exact-operator.io/connection": p.connection,
    });
    let sa: ServiceAccount = typed(serde_json::json!({
        "metadata": {"name": p.app, "namespace": ns, "labels": labels},
    }))?;
    let role_obj: Role = typed(serde_json::json!({
        "metadata": {"name": role, "namespace": ns, "labels": labels},
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [p.secret],
            "verbs": ["get", "list", "watch"],
        }],
    }))?;
    let binding: RoleBinding = typed(serde_json::json!({
        "metadata": {"name": role, "namespace": ns, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": p.app, "namespace": ns}],
    }))?;
    let mount = serde_json::json!({"name": "exact-token", "mountPath": TOKEN_DIR});
    let deployment: Deployment = typed(serde_json::json!({
        "metadata": {"name": p.app, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": p.app}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": p.app,
                    "securityContext": {"fsGroup": AGENT_UID},
                    "volumes": [{"name": "exact-token", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                    "initContainers": [{
                        "name": "exact-token-agent",
                        "image": p.image,
                        "restartPolicy": "Always",
                        "args": [
                            "agent", "--secret", p.secret, "--dir", TOKEN_DIR,
                            "--health-addr", format!("0.0.0.0:{HEALTH_PORT}"),
                        ],
                        "env": [{
                            "name": "POD_NAMESPACE",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        }],
                        "ports": [{"name": "agent-health", "containerPort": HEALTH_PORT}],
                        // The app container starts only once the token files exist.
                        "startupProbe": {
                            "httpGet": {"path": "/readyz", "port": "agent-health"},
                            "periodSeconds": 1,
                            "failureThreshold": 120,
                        },
                        "volumeMounts": [mount],
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"memory": "64Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "runAsUser": AGENT_UID,
                            "runAsGroup": AGENT_UID,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                    "containers": [{
                        "name": "app",
                        "image": "registry.example.com/my-app:latest",
                        "env": [
                            {"name": "EXACT_TOKEN_FILE", "value": format!("{TOKEN_DIR}/access_token")},
                            {"name": "EXACT_API_BASE_URL_FILE", "value": format!("{TOKEN_DIR}/api_base_url")},
                        ],
                        "volumeMounts": [{"name": "exact-token", "mountPath": TOKEN_DIR, "readOnly": true}],
                    }],
                },
            },
        },
    }))?;
    let header = format!(
        "# Workload reading the Exact Online token of ExactConnection {ns}/{conn} (Secret {secret})\n\
         # through the token agent sidecar, which keeps {TOKEN_DIR}/<key> files (access_token,\n\
         # expires_at, division, api_base_url, token_type) fresh. Re-read the files before each call.\n\
         # The sidecar is a native sidecar (initContainer with restartPolicy: Always): Kubernetes 1.29+;\n\
         # its startup probe holds the app container back until the token files exist.\n\
         # Replace the app container's image; apply with: kubectl apply -f <file>\n",
        conn = p.connection,
        secret = p.secret,
    );
    let docs = [
        to_yaml(&sa)?,
        to_yaml(&role_obj)?,
        to_yaml(&binding)?,
        to_yaml(&deployment)?,
    ];
    Ok(format!("{header}---\n{}", docs.join("---\n")))
}

/// A Deployment mounting the token Secret, its pods opted in to the operator's nudge.
fn render_mount(p: &Params) -> Result<String, Error> {
    let ns = &p.namespace;
    let labels = serde_json::json!({
        "app.kubernetes.io/name": p.app,
        "exact-operator.io/connection": p.connection,
    });
    let mut pod_labels = labels.clone();
    pod_labels[crate::nudge::LABEL] = serde_json::Value::String(p.secret.clone());
    let deployment: Deployment = typed(serde_json::json!({
        "metadata": {"name": p.app, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": p.app}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "volumes": [{"name": "exact-token", "secret": {"secretName": p.secret}}],
                    "containers": [{
                        "name": "app",
                        "image": "registry.example.com/my-app:latest",
                        "env": [
                            {"name": "EXACT_TOKEN_FILE", "value": format!("{TOKEN_DIR}/access_token")},
                            {"name": "EXACT_API_BASE_URL_FILE", "value": format!("{TOKEN_DIR}/api_base_url")},
                        ],
                        // Not a subPath mount: the kubelet never updates those.
                        "volumeMounts": [{"name": "exact-token", "mountPath": TOKEN_DIR, "readOnly": true}],
                    }],
                },
            },
        },
    }))?;
    let header = format!(
        "# Workload reading the Exact Online token of ExactConnection {ns}/{conn} from its Secret\n\
         # {secret} mounted at {TOKEN_DIR}. The pods carry the label\n\
         # {label}: {secret}, so an operator running with --nudge-mounting-pods\n\
         # (chart value nudgeMountingPods: true) makes the kubelet refresh the volume right after each\n\
         # token publish; without it the new token arrives at the kubelet's next resync (60-90 s),\n\
         # while Exact keeps the old one only 25 s. Re-read the files before each call.\n\
         # Replace the app container's image; apply with: kubectl apply -f <file>\n",
        conn = p.connection,
        secret = p.secret,
        label = crate::nudge::LABEL,
    );
    Ok(format!("{header}---\n{}", to_yaml(&deployment)?))
}

/// Runs `snippet`: reads the connection for its Secret name and prints the YAML.
pub async fn run(
    session: &Session,
    name: &str,
    image: String,
    app: Option<String>,
    mount: bool,
) -> Result<u8, Error> {
    let conn = session.connection(name).await?;
    let params = Params {
        namespace: session.namespace.clone(),
        connection: name.to_string(),
        secret: workload_secret_name(&conn),
        image,
        app: app.unwrap_or_else(|| format!("{name}-app")),
        mount,
    };
    out(&render(&params)?);
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn params() -> Params {
        Params {
            namespace: "team-a".into(),
            connection: "acme".into(),
            secret: "acme-exact-token".into(),
            image: DEFAULT_IMAGE.into(),
            app: "acme-app".into(),
            mount: false,
        }
    }

    fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
            .filter(|v| !v.is_null())
            .collect()
    }

    #[test]
    fn four_documents_of_the_expected_kinds() {
        let yaml = render(&params()).expect("renders");
        let docs = docs(&yaml);
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
        );
        assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "team-a"));
    }

    #[test]
    fn role_is_limited_to_the_one_secret() {
        let yaml = render(&params()).expect("renders");
        let role: Role = serde_yaml::from_value(docs(&yaml)[1].clone()).expect("a Role");
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["acme-exact-token".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    }

    #[test]
    fn agent_is_a_native_sidecar_sharing_an_empty_dir() {
        let mut p = params();
        p.image = "registry.local/exact-operator:v1".into();
        let yaml = render(&p).expect("renders");
        let d: Deployment = serde_yaml::from_value(docs(&yaml)[3].clone()).expect("a Deployment");
        let pod = d.spec.expect("spec").template.spec.expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("acme-app"));
        let agent = &pod.init_containers.expect("init containers")[0];
        assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            agent.image.as_deref(),
            Some("registry.local/exact-operator:v1")
        );
        assert_eq!(
            agent.args.as_deref(),
            Some(
                &[
                    "agent",
                    "--secret",
                    "acme-exact-token",
                    "--dir",
                    "/var/run/exact",
                    "--health-addr",
                    "0.0.0.0:8098",
                ]
                .map(String::from)[..]
            )
        );
        let probe = agent.startup_probe.as_ref().expect("startup probe");
        let get = probe.http_get.as_ref().expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some("/readyz"));
        let security = pod.security_context.expect("pod security context");
        assert_eq!(
            security.fs_group,
            Some(AGENT_UID),
            "the app may read 0640 files"
        );
        let volumes = pod.volumes.expect("volumes");
        assert!(volumes[0].empty_dir.is_some());
        let app_mount = &pod.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(app_mount.mount_path, TOKEN_DIR);
        assert_eq!(app_mount.read_only, Some(true));
    }

    #[test]
    fn mount_variant_labels_the_pods_for_the_nudge() {
        let mut p = params();
        p.mount = true;
        let yaml = render(&p).expect("renders");
        let docs = docs(&yaml);
        assert_eq!(
            docs.len(),
            1,
            "only the Deployment: the kubelet mounts the Secret"
        );
        let d: Deployment = serde_yaml::from_value(docs[0].clone()).expect("a Deployment");
        let template = d.spec.expect("spec").template;
        let labels = template.metadata.expect("metadata").labels.expect("labels");
        assert_eq!(
            labels.get(crate::nudge::LABEL).map(String::as_str),
            Some("acme-exact-token")
        );
        let pod = template.spec.expect("pod spec");
        let volume = &pod.volumes.expect("volumes")[0];
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("acme-exact-token")
        );
        let mount = &pod.containers[0].volume_mounts.as_ref().expect("mounts")[0];
        assert_eq!(mount.sub_path, None, "subPath mounts are never updated");
        assert!(pod.init_containers.is_none(), "no agent");
    }
}
