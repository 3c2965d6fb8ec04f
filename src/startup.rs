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

/// Event reason on a connection whose previous refresh was cut off by a process death.
pub const REFRESH_INTERRUPTED: &str = "RefreshInterrupted";

/// Replays the token journal before any controller runs: every answer a previous process of
/// this pod received but did not persist is written with the persist rule of its call, then
/// dropped; superseded, expired, foreign and unreadable entries are reported and dropped.
/// An intent whose chain is still stored means the previous process died with that refresh
/// in flight: it is recorded on the state, told in an Event and dropped.
/// An unreachable API server is waited for (nothing else can run then either).
pub async fn replay_journal(
    ctx: &crate::context::Context,
    journal: &crate::journal::Journal,
    max_age: std::time::Duration,
) {
    use crate::crd::ExactConnection;
    use crate::journal::{replay_entry, replay_intent, IntentReplay, Record, Replay};
    use crate::state_store::StateHandle;
    let (entries, bad) = journal.entries();
    for b in &bad {
        tracing::error!(file = %b.path.display(), why = %b.why, "token journal: unreadable entry set aside (.bad) and skipped");
        journal.quarantine(b);
    }
    for (_, record) in entries {
        let (namespace, connection) = {
            let (n, c) = record.connection();
            (n.to_string(), c.to_string())
        };
        let api: kube::Api<ExactConnection> = kube::Api::namespaced(ctx.client.clone(), &namespace);
        let mut delay = std::time::Duration::from_millis(200);
        let conn = loop {
            match api.get_opt(&connection).await {
                Ok(c) => break Ok(c),
                Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => break Err(s.code),
                Err(e) => {
                    tracing::warn!(connection = %connection, error = %e, "token journal: reading the connection failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        };
        let target = match conn {
            Ok(Some(c)) => StateHandle::for_connection(ctx, &c).map(|mut h| {
                h.journal = None; // replaying must not journal again
                (h, c)
            }),
            Ok(None) => None,
            Err(code) => {
                tracing::warn!(namespace = %namespace, connection = %connection, code, "token journal: entry for a connection this operator may not read; dropped");
                None
            }
        };
        match (target, &record) {
            (Some((h, _)), Record::Answer(entry)) => match replay_entry(&h, entry, max_age).await {
                Replay::Apply => {
                    tracing::warn!(namespace = %namespace, connection = %connection, "token journal: persisted an answer the previous process received but did not store")
                }
                Replay::Drop(why) => {
                    tracing::info!(namespace = %namespace, connection = %connection, why, "token journal: entry dropped")
                }
            },
            (Some((h, c)), Record::Intent(intent)) => {
                match replay_intent(&h, intent, max_age).await {
                    IntentReplay::Interrupted => {
                        tracing::warn!(namespace = %namespace, connection = %connection, holder = %intent.holder, at = %intent.at, "token journal: refresh interrupted: the previous process died while its token call was in flight (Exact may have rotated the chain)");
                        let note = format!(
                            "operator process {} sent a token call at {} and died before its answer: \
                             Exact may have rotated the refresh token without the answer being \
                             received; the next refresh tells whether the chain survived",
                            intent.holder, intent.at
                        );
                        crate::events::event(
                            ctx,
                            &c,
                            kube::runtime::events::EventType::Warning,
                            REFRESH_INTERRUPTED,
                            note,
                        )
                        .await;
                    }
                    IntentReplay::Drop(why) => {
                        tracing::info!(namespace = %namespace, connection = %connection, why, "token journal: intent dropped")
                    }
                }
            }
            (None, _) => {
                tracing::info!(namespace = %namespace, connection = %connection, "token journal: the connection is gone; entry dropped")
            }
        }
        journal.settle(&namespace, &connection);
    }
}
