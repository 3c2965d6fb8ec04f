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

/// Replays the token journal before any controller runs: every answer a previous process of
/// this pod received but did not persist is written with the persist rule of its call, then
/// dropped; superseded, expired, foreign and unreadable entries are reported and dropped.
/// An unreachable API server is waited for (nothing else can run then either).
pub async fn replay_journal(
    ctx: &crate::context::Context,
    journal: &crate::journal::Journal,
    max_age: std::time::Duration,
) {
    use crate::crd::ExactConnection;
    use crate::journal::{replay_entry, Replay};
    use crate::state_store::StateHandle;
    let (entries, bad) = journal.entries();
    for b in &bad {
        tracing::error!(file = %b.path.display(), why = %b.why, "token journal: unreadable entry set aside (.bad) and skipped");
        journal.quarantine(b);
    }
    for (_, entry) in entries {
        let api: kube::Api<ExactConnection> =
            kube::Api::namespaced(ctx.client.clone(), &entry.namespace);
        let mut delay = std::time::Duration::from_millis(200);
        let conn = loop {
            match api.get_opt(&entry.connection).await {
                Ok(c) => break Ok(c),
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => break Err(s.code),
                Err(e) => {
                    tracing::warn!(connection = %entry.connection, error = %e, "token journal: reading the connection failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        };
        let handle = match conn {
            Ok(Some(c)) => StateHandle::for_connection(ctx, &c).map(|mut h| {
                h.journal = None; // replaying must not journal again
                h
            }),
            Ok(None) => None,
            Err(code) => {
                tracing::warn!(namespace = %entry.namespace, connection = %entry.connection, code, "token journal: entry for a connection this operator may not read; dropped");
                None
            }
        };
        match handle {
            Some(h) => match replay_entry(&h, &entry, max_age).await {
                Replay::Apply => {
                    tracing::warn!(namespace = %entry.namespace, connection = %entry.connection, "token journal: persisted an answer the previous process received but did not store")
                }
                Replay::Drop(why) => {
                    tracing::info!(namespace = %entry.namespace, connection = %entry.connection, why, "token journal: entry dropped")
                }
            },
            None => {
                tracing::info!(namespace = %entry.namespace, connection = %entry.connection, "token journal: the connection is gone; entry dropped")
            }
        }
        journal.settle(&entry.namespace, &entry.connection);
    }
}
