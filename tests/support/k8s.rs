//! Generic Kubernetes helpers: clients, server-side apply, CRDs, namespaces, polling.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{self, Scope};
use kube::{Client, Config, ResourceExt};
use rand::Rng;
use serde::Deserialize;

use super::{FIELD_MANAGER, SETUP_TIMEOUT};

/// How often [`wait_for`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Builds a client from a kubeconfig file, optionally overriding its default namespace.
pub(super) async fn client_from_kubeconfig(path: &Path, namespace: Option<&str>) -> Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()));
    if let Some(namespace) = namespace {
        config.default_namespace = namespace.to_string();
    }
    Client::try_from(config).expect("cannot build a kube client from the kubeconfig")
}

/// Calls `check` every 200 ms until it returns `Some`, and returns that value; returns
/// `None` once `timeout` has passed (after one last check).
///
/// ```ignore
/// let secret = wait_for(Duration::from_secs(10), || async {
///     secrets.get_opt("tokens").await.ok().flatten()
/// })
/// .await
/// .expect("the operator creates Secret tokens");
/// ```
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Parses a (multi-document) YAML string; empty documents are skipped.
///
/// Panics on malformed YAML: that is a bug in the test, not a test failure.
fn yaml_documents<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("malformed YAML document"))
        .filter(|value| !value.is_null())
        .map(|value| serde_yaml::from_value(value).expect("YAML document of the wrong shape"))
        .collect()
}

/// Server-side applies (forced, field manager [`FIELD_MANAGER`]) every object of a
/// multi-document YAML string, of any kind the server knows (resolved by discovery), in
/// order. Namespaced objects without `metadata.namespace` go to the client's default
/// namespace. Returns the objects as the server stored them, or the first API error.
///
/// Panics on malformed YAML or objects without `apiVersion`/`kind`/`metadata.name`.
pub async fn apply_yaml(client: &Client, yaml: &str) -> kube::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for object in yaml_documents::<DynamicObject>(yaml) {
        applied.push(apply_object(client, object).await?);
    }
    Ok(applied)
}

async fn apply_object(client: &Client, object: DynamicObject) -> kube::Result<DynamicObject> {
    let types = object
        .types
        .as_ref()
        .expect("object without apiVersion/kind");
    let gvk = GroupVersionKind::try_from(types).expect("object with a malformed apiVersion");
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => match object.metadata.namespace.as_deref() {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::default_namespaced_with(client.clone(), &resource),
        },
    };
    let name = object
        .metadata
        .name
        .clone()
        .expect("object without metadata.name");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&object)).await
}

/// Installs the CRDs of a (multi-document) YAML string with server-side apply and waits
/// until each is Established and every served version actually answers a list call.
/// Returns the CRD names. Panics with a clear message when that fails.
pub async fn install_crds(client: &Client, yaml: &str) -> Vec<String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in yaml_documents::<CustomResourceDefinition>(yaml) {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("cannot apply CRD {name}: {e}"));
        names.push(name);
    }
    for name in &names {
        let crd = wait_until_established(&crds, name).await;
        wait_until_served(client, &crd).await;
    }
    names
}

/// Installs every `*.yaml` file of `dir` (sorted by name) with [`install_crds`]. A missing
/// or empty folder installs nothing.
pub(super) async fn install_crd_dir(client: &Client, dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut names = Vec::new();
    for file in files {
        let yaml = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        names.extend(install_crds(client, &yaml).await);
    }
    names
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|conditions| {
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    })
}

async fn wait_until_established(
    crds: &Api<CustomResourceDefinition>,
    name: &str,
) -> CustomResourceDefinition {
    wait_for(SETUP_TIMEOUT, || async {
        let crd = crds.get(name).await.ok()?;
        is_established(&crd).then_some(crd)
    })
    .await
    .unwrap_or_else(|| panic!("CRD {name} not Established within {SETUP_TIMEOUT:?}"))
}

async fn wait_until_served(client: &Client, crd: &CustomResourceDefinition) {
    let spec = &crd.spec;
    for version in spec.versions.iter().filter(|v| v.served) {
        let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let served = wait_for(SETUP_TIMEOUT, || async {
            api.list(&ListParams::default().limit(1)).await.ok()
        })
        .await;
        assert!(
            served.is_some(),
            "{}/{} {} not served within {SETUP_TIMEOUT:?}",
            spec.group,
            version.name,
            spec.names.plural
        );
    }
}

/// A namespace name from the current test's name (libtest names each test's thread after
/// the test): `t-<test name, sanitized, at most 40 chars>-<6 random hex digits>`.
fn namespace_name() -> String {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    let test = test.rsplit("::").next().unwrap_or(test);
    let mut slug: String = test
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(40)
        .collect();
    slug = slug.trim_matches('-').to_string();
    let suffix: u32 = rand::thread_rng().gen_range(0..0x100_0000);
    format!("t-{slug}-{suffix:06x}")
}

/// Creates a new namespace for the calling test, named `t-<test name>-<random>`, labelled
/// `exact-operator.io/test=true`, and returns its name. Namespaces are never deleted: the
/// control plane has no namespace controller to finalize them.
pub async fn fresh_namespace(client: &Client) -> String {
    let name = namespace_name();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "exact-operator.io/test": "true" } }
    }))
    .expect("namespace literal is valid");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    name
}
