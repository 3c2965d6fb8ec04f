//! Prints the CRDs generated from the Rust types; `crds/` holds its output and CI fails
//! when they drift.

use exact_operator::crd::{ExactConnection, ExactOAuthClient, ExactWebhookSubscription};
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1);
    let docs = match which.as_deref() {
        Some("exactoauthclients") => vec![ExactOAuthClient::crd()],
        Some("exactconnections") => vec![ExactConnection::crd()],
        Some("exactwebhooksubscriptions") => vec![ExactWebhookSubscription::crd()],
        None => vec![
            ExactOAuthClient::crd(),
            ExactConnection::crd(),
            ExactWebhookSubscription::crd(),
        ],
        Some(other) => {
            anyhow::bail!("unknown CRD {other:?}: use exactoauthclients, exactconnections or exactwebhooksubscriptions")
        }
    };
    for crd in docs {
        print!("---\n{}", serde_yaml::to_string(&crd)?);
    }
    Ok(())
}
