//! The Helm chart (`charts/exact-operator`) and the plain manifests rendered from it
//! (`deploy/`), against real Helm (`scripts/chart-test`, Helm v4's Go SDK from PyPI) and the
//! real test control plane (kube-apiserver v1.20.2, see `tests/support`).
//!
//! - `deploy/` must be exactly what the chart renders with default values;
//! - `charts/exact-operator/crds/` must be byte-identical to `crds/`;
//! - `kubectl apply --server-side` of `deploy/` works: every object is accepted by the API
//!   server and stored as rendered. The PodDisruptionBudget in `deploy/operator.yaml` is
//!   `policy/v1` (Kubernetes 1.21+); a 1.20 server does not serve that version, so there it is
//!   applied as `policy/v1beta1` with the same spec — the chart itself picks v1beta1 on 1.20
//!   from the cluster's capabilities, which the `helm install` test checks;
//! - `helm install` of the chart into the control plane creates the operator's objects.
//!
//! The control plane runs no pods, so the Deployment is only stored, never rolled out.
//! The ServiceMonitor CRD is absent there: only the defaults (ServiceMonitor off) are applied.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;

const NAMESPACE: &str = "exact-operator-system";
const NAME: &str = "exact-operator";

/// `deploy/` files in the order `deploy/kustomization.yaml` lists them.
const DEPLOY_FILES: [&str; 3] = ["crds.yaml", "rbac.yaml", "operator.yaml"];

/// Runs `scripts/chart-test ARGS`, returns its stdout; panics with its output on failure.
fn chart_test(args: &[&str]) -> String {
    let script = support::repo_path("scripts/chart-test");
    let output = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "`scripts/chart-test {}` failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("chart-test prints UTF-8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `*.yaml` files of a folder: name -> bytes.
fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("readable file");
            (name, bytes)
        })
        .collect()
}

#[test]
fn chart_crds_are_identical_to_the_crds_folder() {
    let ours = yaml_files(&support::repo_path("crds"));
    let chart = yaml_files(&support::repo_path("charts/exact-operator/crds"));
    assert!(!ours.is_empty(), "crds/ holds no CRDs");
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/exact-operator/crds/ must hold the same files as crds/"
    );
    for (name, bytes) in &ours {
        assert!(
            chart[name] == *bytes,
            "charts/exact-operator/crds/{name} differs from crds/{name}: \
             run scripts/chart-test update-deploy"
        );
    }
}

#[test]
fn deploy_folder_is_what_the_chart_renders() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chart-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    chart_test(&["deploy-files", out.to_str().expect("UTF-8 path")]);
    let rendered = std::fs::read_dir(&out).expect("deploy-files wrote a folder");
    let mut names: Vec<String> = rendered
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(support::repo_path("deploy"))
        .expect("deploy/ exists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk, names,
        "deploy/ holds other files than the chart renders"
    );
    for name in &names {
        assert!(
            read(&out.join(name)) == read(&support::repo_path(&format!("deploy/{name}"))),
            "deploy/{name} drifted from the chart: run scripts/chart-test update-deploy"
        );
    }
    let kustomization = read(&support::repo_path("deploy/kustomization.yaml"));
    for file in DEPLOY_FILES {
        assert!(
            kustomization.contains(&format!("- {file}")),
            "kustomization lacks {file}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Whether the server serves PodDisruptionBudgets as policy/v1 (Kubernetes 1.21+).
async fn serves_policy_v1_pdb(client: &Client) -> bool {
    client
        .list_api_group_resources("policy/v1")
        .await
        .is_ok_and(|list| {
            list.resources
                .iter()
                .any(|r| r.kind == "PodDisruptionBudget")
        })
}

/// The PodDisruptionBudget resource in the version the server serves.
async fn pdb_resource(client: &Client) -> ApiResource {
    let version = if serves_policy_v1_pdb(client).await {
        "v1"
    } else {
        "v1beta1"
    };
    let gvk = GroupVersionKind::gvk("policy", version, "PodDisruptionBudget");
    ApiResource::from_gvk_with_plural(&gvk, "poddisruptionbudgets")
}

/// Asserts what every rendering of the operator's Deployment must have.
fn assert_operator_deployment(deployment: &Deployment, service_account: &str) {
    let spec = deployment.spec.as_ref().expect("Deployment has a spec");
    assert_eq!(spec.replicas, Some(2), "two replicas by default");
    let pod = spec
        .template
        .spec
        .as_ref()
        .expect("pod template has a spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(service_account));
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--metrics-addr=0.0.0.0:8080".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--oauth-addr")),
        "{args:?}"
    );
    let pod_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(pod_name.as_deref(), Some("metadata.name"));
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let dropped = security
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(dropped, vec!["ALL".to_string()]);
    let resources = container.resources.as_ref().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());
}

fn assert_leases_rule(role: &ClusterRole) {
    let rules = role.rules.clone().unwrap_or_default();
    let leases = rules
        .iter()
        .find(|r| r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_string()][..]))
        .expect("ClusterRole has a coordination.k8s.io rule");
    assert_eq!(
        leases.resources.as_deref(),
        Some(&["leases".to_string()][..])
    );
    let mut verbs = leases.verbs.clone();
    verbs.sort();
    assert_eq!(
        verbs,
        ["create", "get", "list", "patch", "update", "watch"].map(String::from)
    );
}

#[tokio::test]
async fn deploy_manifests_apply_to_a_real_api_server() {
    let admin = support::admin_client().await;
    let pdb_v1 = serves_policy_v1_pdb(&admin).await;
    let mut applied = 0;
    for file in DEPLOY_FILES {
        let mut yaml = read(&support::repo_path(&format!("deploy/{file}")));
        if !pdb_v1 {
            // 1.20: same PodDisruptionBudget spec, the only version that server has.
            yaml = yaml.replace(
                "apiVersion: policy/v1\nkind: PodDisruptionBudget",
                "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget",
            );
        }
        let objects = support::apply_yaml(&admin, &yaml)
            .await
            .unwrap_or_else(|e| panic!("server-side apply of deploy/{file} failed: {e}"));
        assert!(!objects.is_empty(), "deploy/{file} holds no objects");
        applied += objects.len();
    }
    eprintln!("applied {applied} objects from deploy/ (policy/v1 PDB served: {pdb_v1})");

    Api::<Namespace>::all(admin.clone())
        .get(NAMESPACE)
        .await
        .expect("Namespace exists");
    Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .get(NAME)
        .await
        .expect("ServiceAccount exists");
    let role = Api::<ClusterRole>::all(admin.clone())
        .get(NAME)
        .await
        .expect("ClusterRole exists");
    assert_leases_rule(&role);
    let binding = Api::<ClusterRoleBinding>::all(admin.clone())
        .get(NAME)
        .await
        .expect("ClusterRoleBinding exists");
    let subject = &binding.subjects.as_ref().expect("binding has subjects")[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (NAME, Some(NAMESPACE))
    );
    let deployment = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
        .get(NAME)
        .await
        .expect("Deployment exists");
    assert_operator_deployment(&deployment, NAME);
    let service = Api::<Service>::namespaced(admin.clone(), NAMESPACE)
        .get(NAME)
        .await
        .expect("Service exists");
    let ports: Vec<(Option<String>, i32)> = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name, p.port))
        .collect();
    assert_eq!(ports, vec![(Some("http".to_string()), 8080)]);
    let pdbs: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), NAMESPACE, &pdb_resource(&admin).await);
    let pdb = pdbs.get(NAME).await.expect("PodDisruptionBudget exists");
    assert_eq!(pdb.data["spec"]["minAvailable"], 1, "{:?}", pdb.data);
}

#[tokio::test]
async fn helm_install_creates_the_operator() {
    let admin = support::admin_client().await;
    let namespace = support::fresh_namespace(&admin).await;
    // Unique per run: the ClusterRole and its binding are cluster-wide.
    let suffix = namespace
        .rsplit('-')
        .next()
        .expect("namespace has a suffix");
    let release = format!("smoke-{suffix}");
    let kubeconfig = support::kubeconfig_path();
    let manifest = chart_test(&[
        "install",
        "--kubeconfig",
        kubeconfig.to_str().expect("UTF-8 path"),
        "--namespace",
        &namespace,
        "--name",
        &release,
    ]);
    let full_name = format!("{release}-exact-operator");
    assert!(
        manifest.contains(&format!("name: {full_name}")),
        "{manifest}"
    );

    // Helm's release record and every object of the default values.
    Api::<Secret>::namespaced(admin.clone(), &namespace)
        .get(&format!("sh.helm.release.v1.{release}.v1"))
        .await
        .expect("Helm stored the release");
    Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
        .get(&full_name)
        .await
        .expect("ServiceAccount exists");
    let role = Api::<ClusterRole>::all(admin.clone())
        .get(&full_name)
        .await
        .expect("ClusterRole exists");
    assert_leases_rule(&role);
    let binding = Api::<ClusterRoleBinding>::all(admin.clone())
        .get(&full_name)
        .await
        .expect("ClusterRoleBinding exists");
    let subject = &binding.subjects.as_ref().expect("binding has subjects")[0];
    assert_eq!(subject.namespace.as_deref(), Some(namespace.as_str()));
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &namespace)
        .get(&full_name)
        .await
        .expect("Deployment exists");
    assert_operator_deployment(&deployment, &full_name);
    Api::<Service>::namespaced(admin.clone(), &namespace)
        .get(&full_name)
        .await
        .expect("Service exists");
    // The chart picked the PDB version the server serves (policy/v1beta1 on 1.20).
    let expected = if serves_policy_v1_pdb(&admin).await {
        "apiVersion: policy/v1\nkind: PodDisruptionBudget"
    } else {
        "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget"
    };
    assert!(
        manifest.contains(expected),
        "expected {expected:?} in\n{manifest}"
    );
    let pdbs: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), &namespace, &pdb_resource(&admin).await);
    pdbs.get(&full_name)
        .await
        .expect("PodDisruptionBudget exists");
}
