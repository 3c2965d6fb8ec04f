//! Process start-up: logging, identity, and the check that the CRDs are installed.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use rand::Rng;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Initialises tracing; RUST_LOG (or `level`) sets the filter.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A name unique to this process: the pod name (or host name) plus a random suffix, so two
/// processes never mistake each other's refresh claims for their own.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "exact-operator".into());
    let suffix: u32 = rand::thread_rng().gen();
    format!("{base}-{suffix:08x}")
}

/// The CRDs the operator serves.
pub const CRD_NAMES: [&str; 3] = [
    "exactoauthclients.exact-operator.io",
    "exactconnections.exact-operator.io",
    "exactwebhooksubscriptions.exact-operator.io",
];

/// Fails with a clear message when a CRD is missing.
pub async fn check_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRD_NAMES {
        match api.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!(
                "CRD {name} is not installed: apply crds/ first (kubectl apply --server-side -f crds/)"
            ),
            Err(e) => anyhow::bail!("cannot check CRD {name}: {e}"),
        }
    }
    Ok(())
}
