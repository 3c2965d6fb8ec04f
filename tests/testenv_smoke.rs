//! Smoke tests of the test environment itself (see `tests/support`): a real API server
//! answers, CRDs get installed, and the operator identity has exactly its RBAC rights.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::ByteString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use support::{
    admin_client, apply_yaml, crd_names, fresh_namespace, install_crds, operator_client,
    FIELD_MANAGER,
};

const CONNECTIONS_CRD: &str = "exactconnections.exact-operator.io";

/// Stand-in for the real ExactConnection CRD, used only while `crds/` lacks it.
const STAND_IN_CONNECTIONS_CRD: &str = r"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: exactconnections.exact-operator.io
spec:
  group: exact-operator.io
  scope: Namespaced
  names: {plural: exactconnections, singular: exactconnection, kind: ExactConnection}
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// Makes sure `exactconnections` exists (from `crds/`, else the stand-in); returns its CRD.
async fn connections_crd(admin: &Client) -> CustomResourceDefinition {
    if !crd_names().iter().any(|name| name == CONNECTIONS_CRD) {
        install_crds(admin, STAND_IN_CONNECTIONS_CRD).await;
    }
    Api::<CustomResourceDefinition>::all(admin.clone())
        .get(CONNECTIONS_CRD)
        .await
        .expect("the exactconnections CRD exists")
}

fn connections_resource(crd: &CustomResourceDefinition) -> ApiResource {
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .expect("a CRD has a storage version");
    let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
    ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural)
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    })
}

/// Asserts that `result` is a 403 Forbidden from the API server.
fn assert_forbidden<T: std::fmt::Debug>(result: kube::Result<T>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn apiserver_reports_its_version() {
    let version = admin_client()
        .await
        .apiserver_version()
        .await
        .expect("GET /version");
    eprintln!("kube-apiserver {}", version.git_version);
    assert_eq!(version.major, "1");
    assert!(version.git_version.starts_with("v1."), "{version:?}");
}

#[tokio::test]
async fn crds_from_the_crds_folder_are_established() {
    let admin = admin_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let expected = crds_in_folder();
    assert_eq!(
        crd_names().len(),
        expected.len(),
        "installed {:?}, crds/ has {expected:?}",
        crd_names()
    );
    for name in &expected {
        let crd = crds.get(name).await.expect("CRD from crds/ is installed");
        assert!(is_established(&crd), "{name} is not Established");
    }
    // Whether or not crds/ has it: install_crds makes exactconnections established + served.
    let crd = connections_crd(&admin).await;
    assert!(is_established(&crd));
    let connections: Api<DynamicObject> = Api::all_with(admin, &connections_resource(&crd));
    connections
        .list(&ListParams::default())
        .await
        .expect("exactconnections are served");
}

/// CRD names declared in `crds/*.yaml`, read independently of the support module.
fn crds_in_folder() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(support::repo_path("crds")) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let yaml = std::fs::read_to_string(&path).expect("CRD file is readable");
            for document in serde_yaml::Deserializer::from_str(&yaml) {
                let value = serde_yaml::Value::deserialize(document).expect("valid YAML");
                if !value.is_null() {
                    let crd: CustomResourceDefinition =
                        serde_yaml::from_value(value).expect("CRD file holds CRDs");
                    names.push(crd.name_any());
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn fresh_namespace_is_created_and_unique() {
    let admin = admin_client().await;
    let first = fresh_namespace(&admin).await;
    let second = fresh_namespace(&admin).await;
    assert_ne!(first, second);
    assert!(first.starts_with("t-fresh-namespace-is-created"), "{first}");
    let namespace = Api::<Namespace>::all(admin)
        .get(&first)
        .await
        .expect("namespace exists");
    assert_eq!(
        namespace
            .labels()
            .get("exact-operator.io/test")
            .map(String::as_str),
        Some("true")
    );
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

#[tokio::test]
async fn operator_identity_can_do_its_job() {
    let admin = admin_client().await;
    let namespace = fresh_namespace(&admin).await;
    let operator = operator_client(&namespace).await;

    // Secrets: create, get, list, patch, server-side apply, delete.
    let secrets: Api<Secret> = Api::default_namespaced(operator.clone());
    secrets
        .create(
            &PostParams::default(),
            &secret("tokens", "access_token", "a1"),
        )
        .await
        .expect("operator creates a Secret");
    secrets
        .get("tokens")
        .await
        .expect("operator reads a Secret");
    let listed = secrets
        .list(&ListParams::default())
        .await
        .expect("operator lists Secrets");
    assert_eq!(listed.items.len(), 1);
    let merge = serde_json::json!({ "metadata": { "labels": { "patched": "yes" } } });
    secrets
        .patch("tokens", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("operator patches a Secret");
    let mut applied = secret("tokens", "access_token", "a2");
    applied.metadata.namespace = Some(namespace.clone());
    secrets
        .patch(
            "tokens",
            &PatchParams::apply("exact-operator").force(),
            &Patch::Apply(&applied),
        )
        .await
        .expect("operator server-side applies a Secret");
    secrets
        .delete("tokens", &DeleteParams::default())
        .await
        .expect("operator deletes a Secret");

    // Its custom resources: list in its namespace (the CRD comes from crds/ or a stand-in).
    let crd = connections_crd(&admin).await;
    let connections: Api<DynamicObject> =
        Api::namespaced_with(operator.clone(), &namespace, &connections_resource(&crd));
    connections
        .list(&ListParams::default())
        .await
        .expect("operator lists exactconnections");

    // Events and leader-election Leases.
    create_event(&operator, &namespace).await;
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "exact-operator-leader" },
        "spec": { "holderIdentity": "smoke-test" }
    }))
    .expect("lease literal");
    Api::<Lease>::default_namespaced(operator)
        .create(&PostParams::default(), &lease)
        .await
        .expect("operator creates a Lease");
}

async fn create_event(operator: &Client, namespace: &str) {
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "smoke.1" },
        "eventTime": "2024-01-01T00:00:00.000000Z",
        "reportingController": "exact-operator.io/exact-operator",
        "reportingInstance": "smoke-test",
        "action": "Reconcile",
        "reason": "Smoke",
        "type": "Normal",
        "note": "smoke test",
        "regarding": {
            "kind": "Secret", "apiVersion": "v1", "name": "tokens", "namespace": namespace
        }
    }))
    .expect("event literal");
    Api::<Event>::namespaced(operator.clone(), namespace)
        .create(&PostParams::default(), &event)
        .await
        .expect("operator creates an events.k8s.io Event");
}

#[tokio::test]
async fn operator_identity_is_least_privilege() {
    let admin = admin_client().await;
    let namespace = fresh_namespace(&admin).await;
    let operator = operator_client(&namespace).await;

    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "escalate" },
        "rules": [{ "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] }]
    }))
    .expect("cluster role literal");
    assert_forbidden(
        Api::<ClusterRole>::all(operator.clone())
            .create(&PostParams::default(), &role)
            .await,
        "creating a ClusterRole",
    );
    assert_forbidden(
        Api::<Namespace>::all(operator.clone())
            .delete(&namespace, &DeleteParams::default())
            .await,
        "deleting a Namespace",
    );
    assert_forbidden(
        Api::<k8s_openapi::api::core::v1::ConfigMap>::default_namespaced(operator.clone())
            .list(&ListParams::default())
            .await,
        "listing ConfigMaps",
    );
    // Users create the custom resources, the operator only updates them.
    let crd = connections_crd(&admin).await;
    let connections: Api<DynamicObject> =
        Api::namespaced_with(operator, &namespace, &connections_resource(&crd));
    let mut connection = DynamicObject::new("c1", &connections_resource(&crd));
    connection.data = serde_json::json!({ "spec": {} });
    assert_forbidden(
        connections
            .create(&PostParams::default(), &connection)
            .await,
        "creating an ExactConnection",
    );
}

#[tokio::test]
async fn server_side_apply_of_a_secret_works() {
    let admin = admin_client().await;
    let namespace = fresh_namespace(&admin).await;
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: client, namespace: {namespace}}}\n\
         data: {{client_id: aWQ=}}\n---\n"
    );
    for _ in 0..2 {
        let applied = apply_yaml(&admin, &yaml).await.expect("apply Secret");
        assert_eq!(applied.len(), 1);
    }
    let secret = Api::<Secret>::namespaced(admin, &namespace)
        .get("client")
        .await
        .expect("applied Secret exists");
    let data = secret.data.as_ref().expect("Secret has data");
    assert_eq!(data["client_id"].0, b"id");
    let managers: Vec<_> = secret
        .managed_fields()
        .iter()
        .filter_map(|entry| entry.manager.as_deref())
        .collect();
    assert!(managers.contains(&FIELD_MANAGER), "{managers:?}");
}
