//! `kubectl exact inspect`: everything about one connection in one place: its spec, its
//! client's state, its status and conditions, recent Events, and the keys (never the
//! values) of its managed Secrets.

use super::cluster::{describe, workload_secret_name, Session};
use super::events;
pub use super::inspect_report::{ClientSummary, Report, SecretKeys, SpecSummary, EVENT_LIMIT};
use super::webhooks;
use super::{out, render_data, Error, Format, EXIT_OK};
use crate::crd::{ExactConnection, ExactOAuthClient};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

async fn secret_keys(
    api: &Api<Secret>,
    role: &str,
    name: &str,
    owner_uid: Option<&str>,
) -> SecretKeys {
    let mut keys = SecretKeys {
        role: role.into(),
        name: name.into(),
        exists: false,
        owned_by_connection: false,
        keys: Vec::new(),
        error: None,
    };
    match api.get_opt(name).await {
        Ok(Some(secret)) => {
            keys.exists = true;
            keys.owned_by_connection = secret
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == owner_uid);
            // Only the key names leave this function; the values are dropped here.
            keys.keys = secret
                .data
                .into_iter()
                .flat_map(|d| d.into_keys())
                .collect();
        }
        Ok(None) => {}
        Err(e) => keys.error = Some(describe(&e)),
    }
    keys
}

async fn client_summary(session: &Session, conn: &ExactConnection, ns: &str) -> ClientSummary {
    let r = &conn.spec.client_ref;
    let client_ns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    let api: Api<ExactOAuthClient> = Api::namespaced(session.client.clone(), &client_ns);
    let mut summary = ClientSummary {
        namespace: client_ns,
        name: r.name.clone(),
        found: false,
        client_id: None,
        conditions: Vec::new(),
        error: None,
    };
    match api.get_opt(&r.name).await {
        Ok(Some(c)) => {
            summary.found = true;
            summary.client_id = Some(c.spec.client_id.clone());
            summary.conditions = c.status.map(|s| s.conditions).unwrap_or_default();
        }
        Ok(None) => {}
        Err(e) => summary.error = Some(describe(&e)),
    }
    summary
}

/// Collects the report for connection `name` of the session's namespace.
pub async fn collect(session: &Session, name: &str) -> Result<Report, Error> {
    let conn = session.connection(name).await?;
    let ns = session.namespace.clone();
    let uid = conn.metadata.uid.clone();
    let secrets: Api<Secret> = Api::namespaced(session.client.clone(), &ns);
    let workload = workload_secret_name(&conn);
    let state = crate::secrets::state_secret_name(name);
    let (events, notes) = events::about(
        &session.client,
        &ns,
        "ExactConnection",
        name,
        uid.as_deref(),
        EVENT_LIMIT,
    )
    .await;
    Ok(Report {
        namespace: ns.clone(),
        name: name.to_string(),
        created: conn.metadata.creation_timestamp.as_ref().map(|t| t.0),
        generation: conn.metadata.generation,
        spec: SpecSummary {
            client: format!(
                "{}/{}",
                conn.spec.client_ref.namespace.as_deref().unwrap_or(&ns),
                conn.spec.client_ref.name
            ),
            bootstrap_secret: conn.spec.refresh_token_secret_ref.clone(),
            division: conn.spec.division,
            target_secret: workload.clone(),
            refresh_before: conn.spec.refresh_before.clone(),
            suspend: conn.spec.suspend,
        },
        client: client_summary(session, &conn, &ns).await,
        status: conn.status.clone(),
        secrets: vec![
            secret_keys(&secrets, "workload", &workload, uid.as_deref()).await,
            secret_keys(&secrets, "state", &state, uid.as_deref()).await,
        ],
        webhook_subscriptions: webhooks::list(session, false)
            .await?
            .into_iter()
            .filter(|w| w.connection == name)
            .collect(),
        events,
        notes,
    })
}

/// Runs `inspect`: prints the report as text, JSON or YAML.
pub async fn run(session: &Session, name: &str, format: Format) -> Result<u8, Error> {
    let report = collect(session, name).await?;
    match format {
        Format::Table => out(&super::inspect_text::render(&report, Timestamp::now())),
        other => out(&render_data(&report, other)?),
    }
    Ok(EXIT_OK)
}
