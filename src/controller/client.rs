//! Reconcile of ExactOAuthClient: validate the spec and the referenced Secrets, report Ready.

use super::status::FIELD_MANAGER;
use super::Error;
use crate::conditions::{ready, reason};
use crate::context::Context;
use crate::crd::{ExactOAuthClient, ExactOAuthClientStatus};
use crate::endpoints::resolve;
use crate::secrets::{read_key, RefError};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;

async fn verdict(
    client: &ExactOAuthClient,
    ctx: &Context,
) -> Result<(bool, &'static str, String), Error> {
    let ns = client.namespace().ok_or(Error::MissingNamespace)?;
    if let Err(e) = resolve(&client.spec) {
        return Ok((false, reason::INVALID_SPEC, e.to_string()));
    }
    if let Err(e) = ctx.http_client(client.spec.ca_bundle.as_deref()) {
        return Ok((false, reason::INVALID_SPEC, e));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut refs = vec![("client secret", &client.spec.client_secret_ref)];
    if let Some(w) = &client.spec.webhook_secret_ref {
        refs.push(("webhook secret", w));
    }
    for (what, r) in refs {
        match read_key(&secrets, &ns, &r.name, &r.key).await {
            Ok(_) => {}
            Err(RefError::Api { source, .. }) => return Err(source.into()),
            Err(e) => return Ok((false, reason::SECRET_NOT_FOUND, format!("{what}: {e}"))),
        }
    }
    Ok((
        true,
        reason::CLIENT_READY,
        "client secret resolves and URLs are valid".into(),
    ))
}

/// Reconciles one client.
pub async fn reconcile(client: Arc<ExactOAuthClient>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Another replica's shard writes this status; look again in case the shard moves here.
    if !crate::shard::ownership::owns(ctx.shards.as_deref(), &*client) {
        return Ok(Action::requeue(crate::shard::ownership::UNOWNED_RECHECK));
    }
    let (ok, why, message) = verdict(&client, &ctx).await?;
    let prev = client.status.clone().unwrap_or_default();
    let generation = client.metadata.generation;
    let status = ExactOAuthClientStatus {
        conditions: vec![ready(
            &prev.conditions,
            ok,
            why,
            &message,
            generation,
            Timestamp::now(),
        )],
        observed_generation: generation,
    };
    if status != prev {
        let api: Api<ExactOAuthClient> =
            Api::namespaced(ctx.client.clone(), &client.namespace().unwrap_or_default());
        let patch = serde_json::json!({
            "apiVersion": "exact-operator.io/v1alpha1",
            "kind": "ExactOAuthClient",
            "status": status,
        });
        api.patch_status(
            &client.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::await_change())
}
