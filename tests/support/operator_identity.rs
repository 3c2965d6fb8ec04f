//! The second identity: the operator's ServiceAccount, bound by `deploy/rbac.yaml` only.

use std::path::Path;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::Client;

use super::k8s::{apply_yaml, client_from_kubeconfig, wait_for};
use super::{OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, SETUP_TIMEOUT};

/// Requested token lifetime; the API server may shorten it (default maximum: none).
const TOKEN_SECONDS: i64 = 24 * 3600;

/// Creates the operator's Namespace and ServiceAccount (idempotent), applies
/// `deploy/rbac.yaml`, obtains a token through the TokenRequest API, writes a kubeconfig
/// using it to `out`, and waits until RBAC lets that identity act.
pub(super) async fn set_up(admin: &Client, admin_kubeconfig: &Path, out: &Path) {
    ensure_service_account(admin).await;
    let rbac_path = super::repo_path("deploy/rbac.yaml");
    let rbac = std::fs::read_to_string(&rbac_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", rbac_path.display()));
    apply_yaml(admin, &rbac)
        .await
        .unwrap_or_else(|e| panic!("cannot apply deploy/rbac.yaml: {e}"));
    let token = request_token(admin).await;
    write_kubeconfig(admin_kubeconfig, &token, out);
    wait_until_authorized(out).await;
}

/// The Namespace and ServiceAccount, in case `deploy/rbac.yaml` stops carrying them.
async fn ensure_service_account(admin: &Client) {
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {OPERATOR_NAMESPACE}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\n\
         metadata: {{name: {OPERATOR_SERVICE_ACCOUNT}, namespace: {OPERATOR_NAMESPACE}}}\n"
    );
    apply_yaml(admin, &yaml)
        .await
        .unwrap_or_else(|e| panic!("cannot create the operator's ServiceAccount: {e}"));
}

/// `POST /api/v1/namespaces/exact-operator-system/serviceaccounts/exact-operator/token`.
/// (Legacy token Secrets are never filled in: there is no controller-manager.)
async fn request_token(admin: &Client) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let response = accounts
        .create_token_request(OPERATOR_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for the operator's ServiceAccount failed: {e}"));
    response
        .status
        .expect("TokenRequest response without status")
        .token
}

/// Writes a kubeconfig with the admin kubeconfig's current cluster and the given token.
fn write_kubeconfig(admin_kubeconfig: &Path, token: &str, out: &Path) {
    let admin = Kubeconfig::read_from(admin_kubeconfig).expect("admin kubeconfig is readable");
    let context_name = admin
        .current_context
        .as_deref()
        .expect("admin kubeconfig has a current-context");
    let context = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .expect("admin kubeconfig's current-context exists");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .expect("admin kubeconfig's current cluster exists");
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "cluster", "cluster": cluster }],
        "users": [{ "name": OPERATOR_SERVICE_ACCOUNT, "user": { "token": token } }],
        "contexts": [{
            "name": OPERATOR_SERVICE_ACCOUNT,
            "context": { "cluster": "cluster", "user": OPERATOR_SERVICE_ACCOUNT,
                         "namespace": OPERATOR_NAMESPACE },
        }],
        "current-context": OPERATOR_SERVICE_ACCOUNT,
    });
    let yaml = serde_yaml::to_string(&kubeconfig).expect("kubeconfig serializes");
    write_private(out, &yaml);
}

/// Writes a file readable by its owner only (it holds a bearer token).
fn write_private(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(contents.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// RBAC bindings reach the authorizer through an informer: wait until the new identity can
/// list Secrets in its own namespace before any test relies on it.
async fn wait_until_authorized(operator_kubeconfig: &Path) {
    let client = client_from_kubeconfig(operator_kubeconfig, None).await;
    let secrets: Api<Secret> = Api::namespaced(client, OPERATOR_NAMESPACE);
    let authorized = wait_for(SETUP_TIMEOUT, || async {
        secrets.list(&ListParams::default().limit(1)).await.ok()
    })
    .await;
    assert!(
        authorized.is_some(),
        "the operator's ServiceAccount cannot list Secrets within {SETUP_TIMEOUT:?}: \
         check deploy/rbac.yaml"
    );
}
