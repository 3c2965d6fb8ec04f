//! Start-up against a cluster without the CRDs: a clear exit message. Its own test binary,
//! because it deletes a CRD from its (private) control plane.

mod support;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use std::time::Duration;

#[tokio::test]
async fn missing_crds_stop_the_operator_with_a_clear_message() {
    let admin = support::admin_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    crds.delete(
        "exactconnections.exact-operator.io",
        &DeleteParams::default(),
    )
    .await
    .expect("delete CRD");
    let gone = support::wait_for(Duration::from_secs(30), || async {
        crds.get_opt("exactconnections.exact-operator.io")
            .await
            .ok()
            .and_then(|c| c.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_some(), "CRD deleted");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exact-operator"))
        .env("KUBECONFIG", support::operator_kubeconfig_path())
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("run exact-operator");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CRD exactconnections.exact-operator.io is not installed")
            && err.contains("kubectl apply --server-side -f crds/"),
        "{err}"
    );
}
